"""detectron2's own checkpoints on our trunks: detectron2's names, and no silently random trunk.

Every trunk module (``SEBenchTrunk``, the C4 head's ``res5``) gets three hooks, registered by
``use_detectron2_names``:

- ``state_dict()`` gives detectron2's names (``res2.0.conv1.norm.weight``, ``res2.0.shortcut.*``),
  so our checkpoints are detectron2 checkpoints (a plain ResNet trunk's load into detectron2's own
  R50/R101);
- ``load_state_dict()`` takes detectron2's names (and the registry's, of older files), and gives a
  norm layer that comes with a scale and bias but no statistics (Caffe2/MSRA ImageNet weights,
  which folded them into the scale and bias) mean 0 and variance 1, as detectron2's own
  ``FrozenBatchNorm2d`` does;
- a load that leaves any trunk parameter or buffer unloaded is an ``InputError`` naming the first
  missing tensors, unless partial loads were allowed (``MODEL.SEBENCH.ALLOW_PARTIAL_LOAD``): then
  a warning lists what keeps its random initialisation.

Why hooks on the module and not a converter or a checkpointer of our own: detectron2's
``DetectionCheckpointer`` (in ``DefaultTrainer``, in ``sebench detect``, in a user's own script)
matches Caffe2 ``.pkl`` files by name suffix against ``model.state_dict()``
(``align_and_update_state_dicts``), so the model itself must show detectron2's names for
``R-50.pkl`` to match; a ``.pth``/``.pkl`` in detectron2's names then loads as it is, with
nothing to convert and no special loader to remember.

``report_missing_weights`` covers the rest of the detector: after a load from ImageNet weights it
says once which tensors outside the trunk start from random (expected), and for an evaluation it
refuses to leave any.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from backbones.errors import InputError
from backbones.weights.detectron2 import from_detectron2_name, to_detectron2_name

__all__ = ["report_missing_weights", "use_detectron2_names"]

logger = logging.getLogger(__name__)
# A BatchNorm counter, not a weight: detectron2's FrozenBatchNorm2d and its checkpoints have none.
_COUNTER = "num_batches_tracked"
_SHOWN = 6  # missing tensors named in a message


def use_detectron2_names(module: nn.Module, *, what: str, allow_partial_load: bool) -> None:
    """Make ``module`` (a trunk of registry stages) save and load in detectron2's names and
    refuse loads that leave any of its tensors behind (see the module docstring).

    Args:
        module (nn.Module): the trunk, or the C4 head's res5.
        what (str): how messages name it, e.g. "trunk (resnet50)".
        allow_partial_load (bool): warn instead of raising when tensors are left unloaded.
    """
    module.sebench_trunk = what  # marks the module for report_missing_weights
    module.register_state_dict_post_hook(_rename_to_detectron2)
    module.register_load_state_dict_pre_hook(
        functools.partial(_prepare_load, what=what, allow_partial_load=allow_partial_load)
    )


def _rename_to_detectron2(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    # The module's own entries are the last ones written: renaming them in order keeps the
    # state_dict's order.
    own = [key for key in state_dict if key.startswith(prefix)]
    for key in own:
        state_dict[prefix + to_detectron2_name(key[len(prefix) :])] = state_dict.pop(key)


def _prepare_load(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
    *,
    what: str,
    allow_partial_load: bool,
) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        ours = prefix + from_detectron2_name(key[len(prefix) :])
        if ours != key:
            state_dict[ours] = state_dict.pop(key)
    _fill_folded_norm_statistics(module, state_dict, prefix)
    expected = [from_detectron2_name(k) for k in module.state_dict() if not k.endswith(_COUNTER)]
    missing = [k for k in expected if prefix + k not in state_dict]
    if not missing:
        return
    names = _describe([prefix + to_detectron2_name(k) for k in missing])
    counts = f"{len(missing)} of the {len(expected)} tensors"
    if not allow_partial_load:
        raise InputError(
            f"the weights being loaded leave {counts} of the {what} unloaded (absent from the "
            f"checkpoint or of another shape): {names}. The checkpoint is for another trunk: "
            "check MODEL.SEBENCH.NAME and KWARGS; to start these tensors from random weights "
            "on purpose, set MODEL.SEBENCH.ALLOW_PARTIAL_LOAD True"
        )
    logger.warning(
        "MODEL.SEBENCH.ALLOW_PARTIAL_LOAD: %s of the %s keep their random initialisation: %s",
        counts,
        what,
        names,
    )


def _fill_folded_norm_statistics(
    module: nn.Module, state_dict: dict[str, Any], prefix: str
) -> None:
    """Mean 0, variance 1 for norm layers given a scale and bias but no statistics (Caffe2's
    affine-only BN: the statistics are folded into the scale and bias)."""
    for name, layer in module.named_modules():
        stats = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
        if not all(isinstance(t, torch.Tensor) for t in stats):
            continue
        key = f"{prefix}{name}." if name else prefix
        statistics = (key + "running_mean", key + "running_var")
        if key + "weight" in state_dict and not any(k in state_dict for k in statistics):
            state_dict[key + "running_mean"] = torch.zeros_like(stats[0])
            state_dict[key + "running_var"] = torch.ones_like(stats[1])


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}, ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else shown


def _trunk_prefixes(model: nn.Module) -> list[str]:
    return [f"{name}." for name, m in model.named_modules() if hasattr(m, "sebench_trunk")]


def _top_level_groups(keys: Iterable[str]) -> str:
    """``backbone.fpn_lateral2.weight``, ... -> ``backbone.fpn_lateral*.* (4), ...``."""
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        group = parts[0]
        if group == "backbone":  # the FPN's layers, one group per kind
            group += "." + re.sub(r"\d+$", "*", parts[1])
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{group}.* ({count})" for group, count in groups.items())


def report_missing_weights(
    model: nn.Module, *, heads_may_be_random: bool, allow_partial_load: bool = False
) -> RemovableHandle:
    """Say in one line which tensors outside the trunk a load leaves random, or refuse.

    Training from ImageNet weights leaves the detection heads (FPN, RPN, ROI heads) random: that
    is expected and said once, here, instead of detectron2's list of every missing key. An
    evaluation must load everything: there a missing tensor is an error (a random box predictor
    would give a meaningless AP), unless partial loads were allowed.

    Args:
        model (nn.Module): the detector (not DDP-wrapped).
        heads_may_be_random (bool): True for training, False for evaluation.
        allow_partial_load (bool): ``MODEL.SEBENCH.ALLOW_PARTIAL_LOAD``: warn instead of raising.

    Returns:
        The hook's handle (``.remove()`` it to go back to detectron2's own messages).
    """
    trunks = _trunk_prefixes(model)

    def hook(module: nn.Module, incompatible: Any) -> None:
        # The trunks' missing tensors were reported by their own hooks; the counter is no weight.
        missing = [
            k
            for k in incompatible.missing_keys
            if not k.endswith(_COUNTER) and not k.startswith(tuple(trunks))
        ]
        if not missing:
            return
        if not (heads_may_be_random or allow_partial_load):
            raise InputError(
                f"the weights being loaded have nothing for {len(missing)} tensors of the "
                f"detector ({_top_level_groups(missing)}: {_describe(missing)}): evaluating them "
                "would score random weights. Give a checkpoint of this detector (its "
                "MODEL.ROI_HEADS.NUM_CLASSES and architecture), or set "
                "MODEL.SEBENCH.ALLOW_PARTIAL_LOAD True"
            )
        logger.info(
            "%d tensors outside the trunk are not in the checkpoint and start from their random "
            "initialisation (expected when starting from ImageNet weights): %s",
            len(missing),
            _top_level_groups(missing),
        )
        # Said once: the trunks' hooks named their own, detectron2's checkpointer needs not
        # list them all again.
        incompatible.missing_keys.clear()

    return model.register_load_state_dict_post_hook(hook)

