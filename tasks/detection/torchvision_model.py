"""torchvision's Faster R-CNN with FPN on any registry trunk that offers ``features_only``.

Lin et al., "Feature Pyramid Networks for Object Detection" (arXiv:1612.03144); Ren et al.,
"Faster R-CNN" (arXiv:1506.01497). The trunk is ``backbones.create_model(name,
features_only=True)``; the last feature map of each stride from 4 to 32 feeds torchvision's
``FeaturePyramidNetwork`` with an extra max-pooled level (stride 64), so a ResNet gives the five
levels P2..P6 of detectron2's and torchvision's R50-FPN.

As detectron2 does for ImageNet-initialised trunks, batch norm is frozen by default (statistics
and affine parameters become constants: detection batches of 2 images per GPU are too small to
estimate them) and the first stages are not trained.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import backbones
from backbones.constants import IMAGENET_MEAN, IMAGENET_STD
from backbones.errors import InputError
from backbones.weights.checkpoint import check_state_dict, read_checkpoint

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMS",
    "RegistryFPNBackbone",
    "build_faster_rcnn",
    "freeze_batchnorm",
    "load_trunk_weights",
]

NORMS = ("frozen_bn", "bn", "syncbn")
# Feature maps finer than stride 4 (a stem's stride-2 output) are too large for an FPN level.
MIN_FPN_REDUCTION = 4
# The head modules of a registry classifier, dropped from a classification checkpoint.
HEAD_PREFIXES = ("fc.", "global_pool.", "head_drop.")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with its values.

    Args:
        module (nn.Module): a module, changed in place (a bare ``BatchNorm2d`` is returned new).

    Returns:
        The module with constant normalisation: running statistics and affine parameters are
        buffers, so they neither train nor update.
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def load_trunk_weights(trunk: nn.Module, path: str | Path) -> list[str]:
    """Load a registry classification checkpoint into a ``features_only`` trunk, strictly.

    The classifier head (``fc``, ``global_pool``, ``head_drop``) is dropped; every other key
    must match the trunk's names and shapes.

    Args:
        trunk (nn.Module): the ``features_only`` model (before batch norm is frozen).
        path (str | Path): a ``torch.save``'d state dict or a ``sebench fit`` checkpoint.

    Returns:
        The checkpoint keys that were dropped as head keys.

    Raises:
        ValueError: a missing or unreadable file; missing or unexpected keys or wrong shapes,
            naming a few of each.
    """
    state = read_checkpoint(path).state_dict
    head = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    state = {k: v for k, v in state.items() if k not in head}
    name = getattr(trunk, "model_name", type(trunk).__name__)
    check_state_dict(
        trunk, state, f"trunk weights {path} do not fit {name} (expected a registry state dict "
        "of the same model and model_kwargs)"
    )
    trunk.load_state_dict(state, strict=True)
    return head


def _fpn_levels(feature_info: Any, model_name: str) -> list[int]:
    """Indices of the last feature map of each stride >= 4, in order of stride."""
    last_of_stride: dict[int, int] = {}
    for index, reduction in enumerate(feature_info.reduction()):
        if reduction >= MIN_FPN_REDUCTION:
            last_of_stride[reduction] = index
    if len(last_of_stride) < 2:
        raise InputError(
            f"{model_name} has feature strides {feature_info.reduction()}: an FPN needs at least "
            f"two feature maps of stride >= {MIN_FPN_REDUCTION} (an ImageNet-style trunk such as "
            "resnet50 or se_resnet50, not a CIFAR one)"
        )
    return [last_of_stride[r] for r in sorted(last_of_stride)]


def _create_trunk(model_name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    if model_name not in backbones.list_models():
        raise InputError(
            f"unknown model {model_name!r}; expected a registry name (backbones.list_models(), "
            "e.g. 'se_resnet50')"
        )
    for key in ("features_only", "out_indices", "num_classes"):
        if key in model_kwargs:
            raise InputError(f"model_kwargs must not contain {key!r}: the detector sets it")
    try:
        trunk = backbones.create_model(model_name, features_only=True, **model_kwargs)
    except (AttributeError, NotImplementedError) as err:
        raise InputError(f"{model_name} does not support features_only ({err})") from err
    if not hasattr(trunk, "feature_info"):
        raise InputError(f"{model_name} does not support features_only (no feature_info)")
    return trunk


class RegistryFPNBackbone(nn.Module):
    """A registry trunk and a feature pyramid, as torchvision's detection models expect.

    ``forward`` returns an ``OrderedDict`` of ``out_channels``-wide maps named "0", "1", ...
    (strides 4, 8, 16, 32 for a ResNet) plus "pool" (stride 64).

    Args:
        model_name (str): a registry name with ImageNet-style strides, e.g. "se_resnet50".
        model_kwargs (dict[str, Any] | None): extra ``backbones.create_model`` keywords, e.g.
            ``{"se_reduction": 8}`` (None: none).
        out_channels (int): FPN channels (256).
        trainable_stages (int | None): feature levels trained, counted from the deepest; each
            level is the trunk children up to its feature map (ResNet: stem, layer1 with the
            max-pool, layer2, layer3, layer4). 3 trains layer2..layer4 like torchvision's
            ``trainable_layers=3`` and detectron2's ``FREEZE_AT=2``; None trains all (3).
        norm (str): "frozen_bn" (constant batch norm, as detectron2 for ImageNet trunks),
            "bn" (ordinary batch norm; frozen levels stay in eval mode) or "syncbn" (batch
            norm synchronised across DDP processes; CUDA only) ("frozen_bn").
        weights (str | Path | None): a registry state dict or ``sebench fit`` checkpoint of the
            same model to initialise the trunk; the classifier head is dropped, other keys must
            match exactly (None: random initialisation).
    """

    def __init__(
        self,
        model_name: str,
        *,
        model_kwargs: dict[str, Any] | None = None,
        out_channels: int = 256,
        trainable_stages: int | None = 3,
        norm: Literal["frozen_bn", "bn", "syncbn"] = "frozen_bn",
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise InputError(f"norm={norm!r} is not supported; expected one of {list(NORMS)}")
        trunk = _create_trunk(model_name, dict(model_kwargs or {}))
        if weights is not None:
            load_trunk_weights(trunk, weights)
        self.levels = _fpn_levels(trunk.feature_info, model_name)
        self.level_groups = _level_groups(trunk)
        self.frozen_children = _frozen_children(self.level_groups, trainable_stages, model_name)
        self.norm = norm
        if norm == "frozen_bn":
            trunk = freeze_batchnorm(trunk)
        elif norm == "syncbn":
            trunk = nn.SyncBatchNorm.convert_sync_batchnorm(trunk)
        for name in self.frozen_children:
            trunk[name].requires_grad_(False)
        self.trunk = trunk
        self.model_name = model_name
        channels = trunk.feature_info.channels()
        reductions = trunk.feature_info.reduction()
        self.in_channels = [channels[i] for i in self.levels]
        # The stride of each output map, the max-pooled extra level last.
        self.strides = [reductions[i] for i in self.levels] + [2 * reductions[self.levels[-1]]]
        self.fpn = FeaturePyramidNetwork(
            self.in_channels, out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        self.train()

    @property
    def feature_names(self) -> list[str]:
        """Names of the FPN maps the ROI heads pool from (the "pool" level is RPN-only)."""
        return [str(i) for i in range(len(self.levels))]

    def train(self, mode: bool = True) -> RegistryFPNBackbone:
        super().train(mode)
        if self.norm != "frozen_bn":
            # Frozen levels keep their batch-norm statistics under "bn" and "syncbn" too.
            for name in self.frozen_children:
                self.trunk[name].eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.trunk(x)
        selected = OrderedDict((str(j), features[i]) for j, i in enumerate(self.levels))
        return self.fpn(selected)


def _level_groups(trunk: nn.Module) -> list[list[str]]:
    """The trunk's children grouped by feature level: each level ends at its feature module."""
    groups: list[list[str]] = []
    current: list[str] = []
    feature_modules = set(trunk.feature_info.module_name())
    for name in trunk:
        current.append(name)
        if name in feature_modules:
            groups.append(current)
            current = []
    return groups


def _frozen_children(
    groups: list[list[str]], trainable_stages: int | None, model_name: str
) -> list[str]:
    if trainable_stages is None:
        return []
    if not 0 <= trainable_stages <= len(groups):
        raise InputError(
            f"trainable_stages={trainable_stages} is out of range for {model_name}: it has "
            f"{len(groups)} feature levels {[g[-1] for g in groups]} (0..{len(groups)})"
        )
    frozen = groups[: len(groups) - trainable_stages]
    return [name for group in frozen for name in group]


def build_faster_rcnn(
    model_name: str,
    num_classes: int,
    *,
    model_kwargs: dict[str, Any] | None = None,
    out_channels: int = 256,
    trainable_stages: int | None = 3,
    norm: Literal["frozen_bn", "bn", "syncbn"] = "frozen_bn",
    weights: str | Path | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    detector_kwargs: dict[str, Any] | None = None,
) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` on a ``RegistryFPNBackbone``.

    Anchors: one size per level, 8x its stride (32..512 px for strides 4..64), aspect ratios
    0.5, 1 and 2, as in torchvision's and detectron2's R50-FPN.

    Args:
        model_name (str): registry trunk, e.g. "se_resnet50".
        num_classes (int): object categories, background excluded (80 for COCO); labels are
            1..num_classes, 0 is background.
        model_kwargs, out_channels, trainable_stages, norm, weights: see ``RegistryFPNBackbone``.
        min_size (int | Sequence[int]): shorter image side; a sequence picks one at random per
            training batch (multi-scale training) (800).
        max_size (int): cap of the longer side (1333).
        image_mean (Sequence[float]): per-channel mean of the [0, 1] input (ImageNet's).
        image_std (Sequence[float]): per-channel std (ImageNet's).
        detector_kwargs (dict[str, Any] | None): further ``FasterRCNN`` arguments, e.g.
            ``{"box_detections_per_img": 100}`` (None: torchvision's defaults).

    Returns:
        The detector: in training mode ``model(images, targets)`` returns the loss dict, in eval
        mode ``model(images)`` returns boxes (x1, y1, x2, y2), labels and scores per image.
    """
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1 (object categories), got {num_classes}")
    backbone = RegistryFPNBackbone(
        model_name,
        model_kwargs=model_kwargs,
        out_channels=out_channels,
        trainable_stages=trainable_stages,
        norm=norm,
        weights=weights,
    )
    anchor_generator = AnchorGenerator(
        sizes=tuple((8 * s,) for s in backbone.strides),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(backbone.strides),
    )
    roi_pool = MultiScaleRoIAlign(backbone.feature_names, output_size=7, sampling_ratio=2)
    if isinstance(min_size, Sequence):
        min_size = tuple(int(s) for s in min_size)
    return FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchor_generator,
        box_roi_pool=roi_pool,
        **dict(detector_kwargs or {}),
    )
