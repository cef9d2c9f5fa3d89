"""ResNet, ResNeXt and SENet-154, plain and with SE blocks.

He et al., "Deep Residual Learning for Image Recognition" (arXiv:1512.03385); Xie et al.,
"Aggregated Residual Transformations for Deep Neural Networks" (arXiv:1611.05431); Hu et al.,
"Squeeze-and-Excitation Networks" (arXiv:1709.01507), Table 1 and the supplementary material
(SENet-154). Module names follow timm's ResNet so weights map with few renames
(``backbones/weights/resnet.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.se import PLACEMENTS, ResidualSE, SEConfig

__all__ = ["ResNet", "Bottleneck"]


OUTPUT_STRIDES = (8, 16, 32)


def _conv_bn(
    in_chs: int, out_chs: int, kernel: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    conv = nn.Conv2d(
        in_chs, out_chs, kernel, stride=stride, padding=padding, dilation=dilation, bias=False
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_chs))


class Bottleneck(ResidualSE, nn.Module):
    """1x1 -> 3x3 (grouped) -> 1x1 residual block with an optional SE block.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels (4x the stage's planes).
        first_chs (int): output channels of the first 1x1 conv.
        mid_chs (int): output channels of the 3x3 conv.
        stride (int): spatial stride of the block.
        dilation (int): dilation (and padding) of the 3x3 conv.
        groups (int): groups of the 3x3 conv (ResNeXt cardinality).
        stride_in_1x1 (bool): put the stride on the first 1x1 conv (Caffe, as in the paper's FLOP
            counts) instead of the 3x3 conv (torchvision).
        downsample (nn.Module | None): projection shortcut.
        se (SEConfig | None): SE configuration; None for a plain block.
        stage (int): the paper's stage number (2..5), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        first_chs: int,
        mid_chs: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        stride_in_1x1: bool = True,
        downsample: nn.Module | None = None,
        se: SEConfig | None = None,
        stage: int = 2,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_chs, first_chs, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(first_chs)
        self.conv2 = nn.Conv2d(
            first_chs, mid_chs, 3, stride=stride_3x3, padding=dilation, dilation=dilation,
            groups=groups, bias=False,
        )
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.init_se(se, stage, in_chs=in_chs, mid_chs=mid_chs, out_chs=out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.se_at("pre", x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.se_at("3x3", self.act(self.bn2(self.conv2(x))))
        x = self.act(self.residual_sum(self.bn3(self.conv3(x)), shortcut))
        return self.se_at("post", x)


def _make_stem(stem: str, in_chans: int) -> tuple[nn.Sequential, int]:
    if stem == "7x7":
        layers = [("conv1", nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)),
                  ("bn1", nn.BatchNorm2d(64)), ("act1", nn.ReLU(inplace=True))]
        return nn.Sequential(OrderedDict(layers)), 64
    if stem == "deep":
        # SENet-154 (supplementary (b)): three 3x3 convs replace the 7x7.
        widths = [(in_chans, 64, 2), (64, 64, 1), (64, 128, 1)]
        layers = []
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)),
                       (f"bn{i}", nn.BatchNorm2d(cout)), (f"act{i}", nn.ReLU(inplace=True))]
        return nn.Sequential(OrderedDict(layers)), 128
    raise InputError(f"stem={stem!r} is not supported; expected '7x7' or 'deep'")


class ResNet(Backbone):
    """ResNet / ResNeXt / SENet-154 trunk with an optional SE block in every bottleneck.

    Args:
        layers (Sequence[int]): blocks per stage, conv2_x..conv5_x ((3, 4, 6, 3) for 50 layers).
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        cardinality (int): groups of the 3x3 convs (1; 32 for ResNeXt 32x4d).
        base_width (int): width per group at the first stage (64; 4 for 32x4d).
        first_width_ratio (float): width of the first 1x1 conv relative to the 3x3 conv's
            (1.0; SENet-154 halves it).
        stride_in_1x1 (bool): stride on the first 1x1 conv, Caffe-style as in the paper's ResNet
            FLOP counts (True); False puts it on the 3x3 conv, torchvision-style, which the
            ResNeXt and SENet-154 entrypoints default to (their paper figures and weights).
        stem (str): "7x7" (one 7x7 conv, 64 channels) or "deep" (three 3x3 convs, 128 channels).
        stem_pool_ceil (bool): Caffe's 3x3/2 max-pool with ceil_mode and no padding, which the
            official SENet weights were trained with (False: padding 1).
        downsample_kernel (int): kernel of the strided projection shortcuts (1; SENet-154: 3).
        drop_rate (float): dropout before the classifier (0.0; SENet-154: 0.2).
        output_stride (int): 32, or 16 / 8 for denser features: the last stage (16), or the last
            two (8), keep their input resolution and dilate their 3x3 convs instead (x2, x4),
            as timm's ``output_stride`` (32).
        dilate_first_block (bool): in a dilated stage, dilate the first block's 3x3 conv too,
            as detectron2 (``MODEL.RESNETS.RES5_DILATION``) and mmdetection do; False keeps the
            previous stage's dilation there, as timm and torchvision do (False).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``.
    """

    se_stage_ids = (2, 3, 4, 5)
    se_placements = PLACEMENTS

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        cardinality: int = 1,
        base_width: int = 64,
        first_width_ratio: float = 1.0,
        stride_in_1x1: bool = True,
        stem: str = "7x7",
        stem_pool_ceil: bool = False,
        downsample_kernel: int = 1,
        drop_rate: float = 0.0,
        output_stride: int = 32,
        dilate_first_block: bool = False,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise InputError(f"layers must give 4 stage depths (conv2_x..conv5_x), got {layers}")
        if output_stride not in OUTPUT_STRIDES:
            raise InputError(
                f"output_stride={output_stride!r} is not supported; expected one of "
                f"{list(OUTPUT_STRIDES)}"
            )
        self.stem, in_chs = _make_stem(stem, in_chans)
        self.add_feature(in_chs, 2, "stem")
        self.pool = (nn.MaxPool2d(3, stride=2, ceil_mode=True) if stem_pool_ceil
                     else nn.MaxPool2d(3, stride=2, padding=1))
        reduction, dilation = 4, 1
        for i, depth in enumerate(layers):
            planes = 64 * 2**i
            mid_chs = planes * base_width // 64 * cardinality
            stride, previous_dilation = (1 if i == 0 else 2), dilation
            if reduction * stride > output_stride:  # dilate instead of striding
                stride, dilation = 1, dilation * stride
            stage = self._make_stage(
                in_chs, planes * 4, depth, stride=stride, stage=i + 2,
                dilations=(dilation if dilate_first_block else previous_dilation, dilation),
                mid_chs=mid_chs, first_chs=int(mid_chs * first_width_ratio), groups=cardinality,
                stride_in_1x1=stride_in_1x1, downsample_kernel=downsample_kernel, se=se,
            )
            self.add_module(f"layer{i + 1}", stage)
            in_chs, reduction = planes * 4, reduction * stride
            self.add_feature(in_chs, reduction, f"layer{i + 1}")
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    @staticmethod
    def _make_stage(
        in_chs: int, out_chs: int, depth: int, *, stride: int, dilations: tuple[int, int],
        downsample_kernel: int, **block_args: Any
    ) -> nn.Sequential:
        """``depth`` bottlenecks; the first takes the stride and ``dilations[0]``, the rest
        ``dilations[1]``."""
        blocks = []
        for j in range(depth):
            downsample = None
            dilation = dilations[0] if j == 0 else dilations[1]
            if j == 0 and (stride != 1 or in_chs != out_chs):
                # SENet-154's 3x3 projection stays 3x3 (dilated) in a stage that dilates
                # instead of striding, as in timm.
                kernel = downsample_kernel if stride > 1 or dilations[1] > 1 else 1
                downsample = _conv_bn(in_chs, out_chs, kernel, stride, dilation)
            blocks.append(Bottleneck(in_chs, out_chs, stride=stride if j == 0 else 1,
                                     dilation=dilation, downsample=downsample, **block_args))
            in_chs = out_chs
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _create_resnet(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> ResNet:
    return build_model(ResNet, name, defaults, kwargs)


# ResNeXt keeps its own paper's convention, the stride on the 3x3 conv: the SENet paper's ResNeXt
# FLOPs (4.24 / 7.99 GMACs) and the official SE-ResNeXt weights are counted and trained that way.
_RESNEXT_32X4D = dict(cardinality=32, base_width=4, stride_in_1x1=False)
# SENet-154 (supplementary): ResNeXt-152 64x4d with a halved first 1x1, deep stem, 3x3 strided
# projections, dropout 0.2; the stride sits on the 3x3 conv as in the official weights.
_SENET154 = dict(layers=(3, 8, 36, 3), cardinality=64, base_width=4, first_width_ratio=0.5,
                 stem="deep", stem_pool_ceil=True, downsample_kernel=3, drop_rate=0.2,
                 stride_in_1x1=False)


@register_model(ResNet)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (Caffe-style strides by default)."""
    return _create_resnet("resnet50", dict(layers=(3, 4, 6, 3)), kwargs)


@register_model(ResNet)
def se_resnet50(**kwargs: Any) -> ResNet:
    """SE-ResNet-50 (Table 1)."""
    return _create_resnet("se_resnet50", dict(layers=(3, 4, 6, 3), se=True), kwargs)


@register_model(ResNet)
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101."""
    return _create_resnet("resnet101", dict(layers=(3, 4, 23, 3)), kwargs)


@register_model(ResNet)
def se_resnet101(**kwargs: Any) -> ResNet:
    """SE-ResNet-101."""
    return _create_resnet("se_resnet101", dict(layers=(3, 4, 23, 3), se=True), kwargs)


@register_model(ResNet)
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152."""
    return _create_resnet("resnet152", dict(layers=(3, 8, 36, 3)), kwargs)


@register_model(ResNet)
def se_resnet152(**kwargs: Any) -> ResNet:
    """SE-ResNet-152."""
    return _create_resnet("se_resnet152", dict(layers=(3, 8, 36, 3), se=True), kwargs)


@register_model(ResNet)
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 (32x4d)."""
    return _create_resnet("resnext50_32x4d", dict(layers=(3, 4, 6, 3), **_RESNEXT_32X4D), kwargs)


@register_model(ResNet)
def se_resnext50_32x4d(**kwargs: Any) -> ResNet:
    """SE-ResNeXt-50 (32x4d) (Table 1)."""
    defaults = dict(layers=(3, 4, 6, 3), se=True, **_RESNEXT_32X4D)
    return _create_resnet("se_resnext50_32x4d", defaults, kwargs)


@register_model(ResNet)
def resnext101_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 (32x4d)."""
    defaults = dict(layers=(3, 4, 23, 3), **_RESNEXT_32X4D)
    return _create_resnet("resnext101_32x4d", defaults, kwargs)


@register_model(ResNet)
def se_resnext101_32x4d(**kwargs: Any) -> ResNet:
    """SE-ResNeXt-101 (32x4d)."""
    defaults = dict(layers=(3, 4, 23, 3), se=True, **_RESNEXT_32X4D)
    return _create_resnet("se_resnext101_32x4d", defaults, kwargs)


@register_model(ResNet)
def senet154(**kwargs: Any) -> ResNet:
    """SENet-154, the ILSVRC 2017 winner's base model (supplementary material)."""
    return _create_resnet("senet154", dict(_SENET154, se=True), kwargs)


@register_model(ResNet)
def senet154_plain(**kwargs: Any) -> ResNet:
    """SENet-154's trunk without SE blocks: its plain baseline."""
    return _create_resnet("senet154_plain", dict(_SENET154), kwargs)
