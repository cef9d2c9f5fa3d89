"""torchvision's detectors with FPN on any registry trunk that offers ``features_only``.

Lin et al., "Feature Pyramid Networks for Object Detection" (arXiv:1612.03144); Ren et al.,
"Faster R-CNN" (arXiv:1506.01497); He et al., "Mask R-CNN" (arXiv:1703.06870); Lin et al.,
"Focal Loss for Dense Object Detection" (RetinaNet, arXiv:1708.02002); Tian et al., "FCOS"
(arXiv:1904.01355). The trunk is ``backbones.create_model(name, features_only=True)``; the last
feature map of each stride feeds torchvision's ``FeaturePyramidNetwork``. Two pyramids, as in
detectron2's and torchvision's R50-FPN models:

- "p2-p6" (Faster and Mask R-CNN): strides 4 to 32 plus a max-pooled P6 (stride 64);
- "p3-p7" (RetinaNet): strides 8 to 32 plus P6 and P7 by stride-2 convs from C5 (the trunk's
  last map); "p3-p7-p5" (FCOS): the same with P6 computed from P5.

As detectron2 does for ImageNet-initialised trunks, batch norm is frozen by default (statistics
and affine parameters become constants: detection batches of 2 images per GPU are too small to
estimate them) and the first stages are not trained.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
)

import backbones
from backbones.constants import IMAGENET_MEAN, IMAGENET_STD
from backbones.errors import InputError
from backbones.weights.checkpoint import check_state_dict, read_checkpoint

__all__ = [
    "DETECTORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMS",
    "PYRAMIDS",
    "RegistryFPNBackbone",
    "build_detector",
    "build_faster_rcnn",
    "freeze_batchnorm",
    "load_trunk_weights",
]

NORMS = ("frozen_bn", "bn", "syncbn")


@dataclass(frozen=True)
class Pyramid:
    """Which trunk maps an FPN takes and how it adds coarser levels.

    Attributes:
        min_stride: the finest trunk stride with a level (maps finer than stride 4, a stem's
            stride-2 output, are too large for one).
        extra: "pool" (one max-pooled level) or "p6p7" (two stride-2 3x3 convs).
        p6_from: input of the first "p6p7" conv, "C5" (the trunk's last map) or "P5".
    """

    min_stride: int
    extra: Literal["pool", "p6p7"]
    p6_from: Literal["C5", "P5"] = "C5"


PYRAMIDS = {
    "p2-p6": Pyramid(4, "pool"),
    "p3-p7": Pyramid(8, "p6p7", "C5"),
    "p3-p7-p5": Pyramid(8, "p6p7", "P5"),
}
# Each detector's pyramid, as in its paper, detectron2 and torchvision.
DETECTORS = {
    "faster_rcnn": "p2-p6",
    "mask_rcnn": "p2-p6",
    "retinanet": "p3-p7",
    "fcos": "p3-p7-p5",
}
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


def _fpn_levels(feature_info: Any, model_name: str, min_stride: int) -> list[int]:
    """Indices of the last feature map of each stride >= ``min_stride``, in order of stride."""
    last_of_stride: dict[int, int] = {}
    for index, reduction in enumerate(feature_info.reduction()):
        if reduction >= min_stride:
            last_of_stride[reduction] = index
    if len(last_of_stride) < 2:
        raise InputError(
            f"{model_name} has feature strides {feature_info.reduction()}: this pyramid needs "
            f"at least two feature maps of stride >= {min_stride} (an ImageNet-style trunk: "
            "ResNet, ResNeXt, SENet-154, VGG, MobileNet, ShuffleNet, BN-Inception, "
            "Inception-ResNet-v2; not a CIFAR one)"
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
    (strides 4, 8, 16, 32 for a ResNet) plus "pool" (stride 64) for the "p2-p6" pyramid; "0",
    "1", "2" (strides 8, 16, 32) plus "p6" and "p7" (64, 128) for "p3-p7" and "p3-p7-p5".

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
        pyramid (str): "p2-p6", "p3-p7" or "p3-p7-p5" (see the module's docstring; "p2-p6").
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
        pyramid: Literal["p2-p6", "p3-p7", "p3-p7-p5"] = "p2-p6",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise InputError(f"norm={norm!r} is not supported; expected one of {list(NORMS)}")
        if pyramid not in PYRAMIDS:
            raise InputError(
                f"pyramid={pyramid!r} is not supported; expected one of {list(PYRAMIDS)}"
            )
        shape = PYRAMIDS[pyramid]
        trunk = _create_trunk(model_name, dict(model_kwargs or {}))
        if weights is not None:
            load_trunk_weights(trunk, weights)
        self.levels = _fpn_levels(trunk.feature_info, model_name, shape.min_stride)
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
        extra = _extra_levels(shape, self.in_channels[-1], out_channels)
        # The stride of each output map, the extra levels last.
        top = reductions[self.levels[-1]]
        extra_strides = [2 * top] if shape.extra == "pool" else [2 * top, 4 * top]
        self.strides = [reductions[i] for i in self.levels] + extra_strides
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.pyramid = pyramid
        self.train()

    @property
    def feature_names(self) -> list[str]:
        """Names of the trunk levels' FPN maps: the ROI heads pool from these (the extra levels
        are the RPN's)."""
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


def _extra_levels(shape: Pyramid, c5_channels: int, out_channels: int) -> ExtraFPNBlock:
    if shape.extra == "pool":
        return LastLevelMaxPool()
    # torchvision's block convolves P5 when its input and output widths are equal, else C5.
    in_channels = c5_channels if shape.p6_from == "C5" else out_channels
    if shape.p6_from == "C5" and c5_channels == out_channels:
        raise InputError(
            f"P6 from C5 needs a last trunk map wider or narrower than the FPN "
            f"({out_channels} channels both); change out_channels"
        )
    return LastLevelP6P7(in_channels, out_channels)


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


def build_detector(
    detector: str,
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
) -> nn.Module:
    """A torchvision detector on a ``RegistryFPNBackbone`` with the detector's own pyramid.

    - "faster_rcnn" (``FasterRCNN``) and "mask_rcnn" (``MaskRCNN``, 14x14 mask pooling): the
      "p2-p6" pyramid; one anchor size per level, 8x its stride (32..512 px for strides
      4..64), aspect ratios 0.5, 1 and 2, as torchvision's and detectron2's R50-FPN.
    - "retinanet" (``RetinaNet``): "p3-p7"; anchors 4x the stride at three scales (x1, x2^(1/3),
      x2^(2/3)) and the same three ratios (32..813 px for strides 8..128), as the paper.
    - "fcos" (``FCOS``): "p3-p7-p5"; one point per location (an anchor of the stride's size).

    Args:
        detector (str): one of ``DETECTORS``.
        model_name (str): registry trunk, e.g. "se_resnet50".
        num_classes (int): object categories, background excluded (80 for COCO); labels are
            1..num_classes, 0 is background (torchvision counts it for every detector).
        model_kwargs, out_channels, trainable_stages, norm, weights: see ``RegistryFPNBackbone``.
        min_size (int | Sequence[int]): shorter image side; a sequence picks one at random per
            training batch (multi-scale training) (800).
        max_size (int): cap of the longer side (1333).
        image_mean (Sequence[float]): per-channel mean of the [0, 1] input (ImageNet's).
        image_std (Sequence[float]): per-channel std (ImageNet's).
        detector_kwargs (dict[str, Any] | None): further arguments of the torchvision class,
            e.g. ``{"box_detections_per_img": 100}`` (None: torchvision's defaults).

    Returns:
        The detector: in training mode ``model(images, targets)`` returns the loss dict, in eval
        mode ``model(images)`` returns boxes (x1, y1, x2, y2), labels and scores per image (and
        ``masks``, [N, 1, H, W] probabilities, for Mask R-CNN).
    """
    if detector not in DETECTORS:
        raise InputError(
            f"detector={detector!r} is not supported; expected one of {list(DETECTORS)}"
        )
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1 (object categories), got {num_classes}")
    backbone = RegistryFPNBackbone(
        model_name,
        model_kwargs=model_kwargs,
        out_channels=out_channels,
        trainable_stages=trainable_stages,
        norm=norm,
        weights=weights,
        pyramid=DETECTORS[detector],
    )
    if isinstance(min_size, Sequence):
        min_size = tuple(int(s) for s in min_size)
    common = {
        "num_classes": num_classes + 1,
        "min_size": min_size,
        "max_size": max_size,
        "image_mean": list(image_mean),
        "image_std": list(image_std),
    }
    return _HEADS[detector](backbone, common, dict(detector_kwargs or {}))


def _two_stage(backbone: RegistryFPNBackbone, kwargs: dict[str, Any]) -> dict[str, Any]:
    anchors = AnchorGenerator(
        sizes=tuple((8 * s,) for s in backbone.strides),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(backbone.strides),
    )
    roi_pool = MultiScaleRoIAlign(backbone.feature_names, output_size=7, sampling_ratio=2)
    return {"rpn_anchor_generator": anchors, "box_roi_pool": roi_pool, **kwargs}


def _faster_rcnn(backbone: RegistryFPNBackbone, common: dict, kwargs: dict) -> FasterRCNN:
    return FasterRCNN(backbone, **common, **_two_stage(backbone, kwargs))


def _mask_rcnn(backbone: RegistryFPNBackbone, common: dict, kwargs: dict) -> MaskRCNN:
    mask_pool = MultiScaleRoIAlign(backbone.feature_names, output_size=14, sampling_ratio=2)
    kwargs = {"mask_roi_pool": mask_pool, **kwargs}
    return MaskRCNN(backbone, **common, **_two_stage(backbone, kwargs))


def _retinanet(backbone: RegistryFPNBackbone, common: dict, kwargs: dict) -> RetinaNet:
    anchors = AnchorGenerator(
        sizes=tuple(tuple(int(4 * s * 2 ** (k / 3)) for k in range(3)) for s in backbone.strides),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(backbone.strides),
    )
    return RetinaNet(backbone, **common, anchor_generator=anchors, **kwargs)


def _fcos(backbone: RegistryFPNBackbone, common: dict, kwargs: dict) -> FCOS:
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in backbone.strides), aspect_ratios=((1.0,),) * len(backbone.strides)
    )
    return FCOS(backbone, **common, anchor_generator=anchors, **kwargs)


_HEADS = {"faster_rcnn": _faster_rcnn, "mask_rcnn": _mask_rcnn, "retinanet": _retinanet,
          "fcos": _fcos}


def build_faster_rcnn(model_name: str, num_classes: int, **kwargs: Any) -> FasterRCNN:
    """``build_detector("faster_rcnn", model_name, num_classes, **kwargs)``."""
    return build_detector("faster_rcnn", model_name, num_classes, **kwargs)
