"""timm -> sebench key map for the ResNet family (ResNet, ResNeXt, SENet-154).

timm holds two layouts: ``resnet.py`` models (``conv1``/``bn1`` stem, ``se`` modules, ``fc``) and
the legacy ``senet.py`` models that carry the official SENet weights (``layer0`` stem,
``se_module``, ``last_linear``). Both use 1x1 convs as the SE's FC layers; ours are Linear.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import InputError

# (pattern, replacement), applied in order to every key.
_RENAMES = [
    (r"^layer0\.", "stem."),  # legacy stem
    (r"^(conv1|bn1)\.", r"stem.\1."),  # timm resnet stem
    (r"\.se_module\.", ".se."),
    (r"^last_linear\.", "fc."),
]

# What our builder must be given to compute the same function as each timm model, in eval and
# train mode: the stride position of its bottlenecks, the max-pool of its stem and the dropout
# before its classifier (timm's legacy SENet models drop 20% of the pooled features). Every
# convention is spelled out, even where it is our registry default, so a change of default
# cannot break the equivalence.
_LEGACY = dict(stem_pool_ceil=True, drop_rate=0.2)
_TIMM_RESNET = dict(stem_pool_ceil=False, stride_in_1x1=False, drop_rate=0.0)
TIMM_EQUIVALENTS: dict[str, tuple[str, dict]] = {
    "legacy_seresnet50": ("se_resnet50", dict(_LEGACY, stride_in_1x1=True)),
    "legacy_seresnet101": ("se_resnet101", dict(_LEGACY, stride_in_1x1=True)),
    "legacy_seresnet152": ("se_resnet152", dict(_LEGACY, stride_in_1x1=True)),
    "legacy_seresnext50_32x4d": ("se_resnext50_32x4d", dict(_LEGACY, stride_in_1x1=False)),
    "legacy_seresnext101_32x4d": ("se_resnext101_32x4d", dict(_LEGACY, stride_in_1x1=False)),
    "legacy_senet154": ("senet154", dict(_LEGACY, stride_in_1x1=False)),
    "seresnet50": ("se_resnet50", dict(_TIMM_RESNET)),
    "resnet50": ("resnet50", dict(_TIMM_RESNET)),
    "resnet101": ("resnet101", dict(_TIMM_RESNET)),
    "resnet152": ("resnet152", dict(_TIMM_RESNET)),
}


def remap_timm_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename timm keys to ours and reshape 1x1-conv SE weights to Linear weights."""
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        if re.search(r"\.se\.fc[12]\.weight$", key) and value.dim() == 4:
            value = value.flatten(1)
        out[key] = value
    # timm's BN layers may lack num_batches_tracked (older checkpoints): keep ours.
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value
    return out


def check_timm_conventions(model: nn.Module, timm_model: nn.Module) -> None:
    """Raise if ``model`` places strides or pools differently from ``timm_model``.

    Weights of both conventions have the same shapes, so only the modules can tell them apart.
    """
    if not hasattr(model, "layer2"):
        return  # a features_only extractor that stops before layer2 has no strided bottleneck
    ours, theirs = model.layer2[0], timm_model.layer2[0]
    if ours.conv1.stride != theirs.conv1.stride:
        in_1x1 = theirs.conv1.stride != (1, 1)
        raise InputError(
            f"timm's {type(timm_model).__name__} puts the bottleneck stride on the "
            f"{'1x1' if in_1x1 else '3x3'} conv; build ours with stride_in_1x1={in_1x1}"
        )
    timm_pool = getattr(timm_model, "pool0", None) or getattr(timm_model, "maxpool", None)
    if isinstance(timm_pool, nn.MaxPool2d) and timm_pool.ceil_mode != model.pool.ceil_mode:
        raise InputError(
            f"timm's stem max-pool has ceil_mode={timm_pool.ceil_mode}; build ours with "
            f"stem_pool_ceil={timm_pool.ceil_mode}"
        )
