"""Pre-activation ResNets for CIFAR (32x32), plain and with SE blocks.

He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (arXiv:1603.05027): the
ResNet-110 (basic blocks) and ResNet-164 (bottlenecks) of Tables 4 and 5 of Hu et al.,
"Squeeze-and-Excitation Networks" (arXiv:1709.01507). A 3x3 stem conv, three stages at strides
1, 2, 4 and a final BN-ReLU before the global pool. The SE block sits on the residual branch's
output before the sum, as in the paper's Sec. 3.3.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.se import PLACEMENTS, ResidualSE, SEConfig

__all__ = ["PreActResNet", "PreActBasicBlock", "PreActBottleneck"]

BLOCKS = ("basic", "bottleneck")


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Conv2d | None:
    """He et al.'s 1x1 projection where the shape changes (no BN: the next block normalises)."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


def _pre_act_forward(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-activated branch input and the shortcut of a pre-activation block.

    A projection shares the branch's BN-ReLU (He et al.), while an identity shortcut carries the
    raw input. With SE-PRE the rescaled input feeds that shared BN-ReLU, so a projection shortcut
    sees it too; identity shortcuts never do (Fig. 5(b)).
    """
    pre = block.act1(block.bn1(block.se_at("pre", x)))
    shortcut = x if block.downsample is None else block.downsample(pre)
    return pre, shortcut


class PreActBasicBlock(ResidualSE, nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 residual block with an optional SE block.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels.
        stride (int): stride of the first conv and of the projection shortcut.
        dropout (float): dropout between the two convs (Wide ResNets; 0.0: none).
        se (SEConfig | None): SE configuration; None for a plain block. Sites: "standard",
            "pre", "post", "identity" (there is no 3x3 site distinct from "standard" here).
        stage (int): stage number (1..3), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int = 1,
        dropout: float = 0.0,
        se: SEConfig | None = None,
        stage: int = 1,
    ) -> None:
        super().__init__()
        if se is not None and se.placement == "3x3":
            raise InputError(
                "se_placement='3x3' is not supported by the basic pre-activation block; expected "
                "one of ['standard', 'pre', 'post', 'identity']"
            )
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.downsample = _projection(in_chs, out_chs, stride)
        self.init_se(se, stage, in_chs=in_chs, mid_chs=out_chs, out_chs=out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, shortcut = _pre_act_forward(self, x)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.act2(self.bn2(out))))
        # No activation after the sum: the next block (or the final BN-ReLU) pre-activates.
        return self.se_at("post", self.residual_sum(out, shortcut))


class PreActBottleneck(ResidualSE, nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 residual block with an optional SE block.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels (4x ``mid_chs``).
        mid_chs (int): bottleneck width.
        stride (int): stride of the 3x3 conv and of the projection shortcut.
        se (SEConfig | None): SE configuration; None for a plain block. Sites: "standard",
            "pre", "post", "identity" and "3x3" (on the 3x3 conv's output).
        stage (int): stage number (1..3), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        mid_chs: int,
        stride: int = 1,
        se: SEConfig | None = None,
        stage: int = 1,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(mid_chs, mid_chs, stride)
        self.bn3 = nn.BatchNorm2d(mid_chs)
        self.act3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.downsample = _projection(in_chs, out_chs, stride)
        self.init_se(se, stage, in_chs=in_chs, mid_chs=mid_chs, out_chs=out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, shortcut = _pre_act_forward(self, x)
        out = self.conv1(out)
        out = self.se_at("3x3", self.conv2(self.act2(self.bn2(out))))
        out = self.conv3(self.act3(self.bn3(out)))
        return self.se_at("post", self.residual_sum(out, shortcut))


class PreActResNet(Backbone):
    """Pre-activation ResNet for 32x32 inputs with an optional SE block in every residual block.

    Args:
        layers (Sequence[int]): blocks per stage ((18, 18, 18) for ResNet-110 and -164).
        num_classes (int): classifier outputs; 0 for none (10).
        in_chans (int): input channels (3).
        block (str): "basic" (two 3x3 convs) or "bottleneck" (1x1-3x3-1x1, 4x expansion).
        widths (Sequence[int]): per-stage width: the output channels of basic blocks, the
            bottleneck (3x3) width of bottlenecks ((16, 32, 64)).
        stem_width (int): output channels of the 3x3 stem conv (16).
        dropout (float): dropout between the convs of basic blocks (0.0; Wide ResNets).
        drop_rate (float): dropout before the classifier (0.0).
        se (SEConfig | None): SE configuration (None: plain); stages are numbered 1..3. Built
            from ``se_*`` keywords by ``create_model``.
    """

    default_input_size = (3, 32, 32)
    se_stage_ids = (1, 2, 3)
    se_placements = PLACEMENTS

    def __init__(
        self,
        layers: Sequence[int] = (18, 18, 18),
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        block: str = "basic",
        widths: Sequence[int] = (16, 32, 64),
        stem_width: int = 16,
        dropout: float = 0.0,
        drop_rate: float = 0.0,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise InputError(f"block={block!r} is not supported; expected one of {list(BLOCKS)}")
        if len(layers) != 3 or len(widths) != 3:
            raise InputError(
                f"layers and widths must give 3 stages each, got layers={tuple(layers)}, "
                f"widths={tuple(widths)}"
            )
        if dropout > 0 and block != "basic":
            raise InputError(f"dropout={dropout} is only implemented for block='basic'")
        self.stem = _conv3x3(in_chans, stem_width)
        self.add_feature(stem_width, 1, "stem")
        in_chs = stem_width
        for i, (depth, width) in enumerate(zip(layers, widths)):
            out_chs = width if block == "basic" else width * 4
            stage = _make_stage(
                block,
                in_chs,
                out_chs,
                depth,
                stride=1 if i == 0 else 2,
                stage=i + 1,
                width=width,
                dropout=dropout,
                se=se,
            )
            self.add_module(f"stage{i + 1}", stage)
            in_chs = out_chs
            if i < 2:
                self.add_feature(out_chs, 2**i, f"stage{i + 1}")
        # The last stage's sum is not normalised; the final BN-ReLU output is what gets pooled,
        # so it is the deepest feature level.
        self.final_act = nn.Sequential(nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True))
        self.add_feature(in_chs, 4, "final_act")
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.final_act(x)


def _make_stage(
    block: str,
    in_chs: int,
    out_chs: int,
    depth: int,
    *,
    stride: int,
    stage: int,
    width: int,
    dropout: float,
    se: SEConfig | None,
) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for j in range(depth):
        block_stride = stride if j == 0 else 1
        if block == "basic":
            blocks.append(
                PreActBasicBlock(
                    in_chs, out_chs, stride=block_stride, dropout=dropout, se=se, stage=stage
                )
            )
        else:
            blocks.append(
                PreActBottleneck(
                    in_chs, out_chs, mid_chs=width, stride=block_stride, se=se, stage=stage
                )
            )
        in_chs = out_chs
    return nn.Sequential(*blocks)


def _create_preact_resnet(
    name: str, defaults: dict[str, Any], kwargs: dict[str, Any]
) -> PreActResNet:
    return build_model(PreActResNet, name, defaults, kwargs)


_RESNET110 = dict(layers=(18, 18, 18), block="basic")
_RESNET164 = dict(layers=(18, 18, 18), block="bottleneck")


@register_model(PreActResNet)
def preact_resnet110(**kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-110 for CIFAR (basic blocks, Table 4)."""
    return _create_preact_resnet("preact_resnet110", dict(_RESNET110), kwargs)


@register_model(PreActResNet)
def se_preact_resnet110(**kwargs: Any) -> PreActResNet:
    """SE-ResNet-110 (pre-activation) for CIFAR (Table 4)."""
    return _create_preact_resnet("se_preact_resnet110", dict(_RESNET110, se=True), kwargs)


@register_model(PreActResNet)
def preact_resnet164(**kwargs: Any) -> PreActResNet:
    """Pre-activation ResNet-164 for CIFAR (bottlenecks, Table 4)."""
    return _create_preact_resnet("preact_resnet164", dict(_RESNET164), kwargs)


@register_model(PreActResNet)
def se_preact_resnet164(**kwargs: Any) -> PreActResNet:
    """SE-ResNet-164 (pre-activation) for CIFAR (Table 4)."""
    return _create_preact_resnet("se_preact_resnet164", dict(_RESNET164, se=True), kwargs)
