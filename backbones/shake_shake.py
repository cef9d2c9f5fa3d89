"""Shake-Shake networks for CIFAR (32x32), plain and with SE blocks.

Gastaldi, "Shake-Shake regularization", arXiv:1705.07485 (and the author's Torch code,
github.com/xgastaldi/shake-shake): Shake-Shake 26 2x96d (CIFAR-10) and Shake-Even 29 2x4x64d
(CIFAR-100) of Tables 4 and 5 of Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507).
Each residual block has two branches mixed by random per-image weights: alpha ~ U(0, 1) in the
forward pass, an independent beta ~ U(0, 1) in the backward pass, 0.5 for both at test time.
The SE variant puts one SE block at the end of each branch, before the mixing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.se import SEConfig, make_se

__all__ = ["ShakeShakeNet", "ShakeShakeBlock", "ShakeShortcut", "shake_shake"]

FORWARD_MODES = ("shake", "even")
BACKWARD_MODES = ("shake", "even", "keep")
SHAKE_LEVELS = ("image", "batch")
BLOCKS = ("basic", "bottleneck")


class _ShakeShakeFunction(torch.autograd.Function):
    """alpha * x1 + (1 - alpha) * x2 forward; gradients scaled by beta and 1 - beta backward."""

    @staticmethod
    def forward(
        ctx: Any, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (beta,) = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


def _coefficients(mode: str, x: torch.Tensor, level: str) -> torch.Tensor:
    shape = (x.shape[0] if level == "image" else 1,) + (1,) * (x.dim() - 1)
    if mode == "shake":
        return torch.rand(shape, dtype=x.dtype, device=x.device)
    return torch.full(shape, 0.5, dtype=x.dtype, device=x.device)


def shake_shake(
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    training: bool,
    forward_mode: str = "shake",
    backward_mode: str = "shake",
    level: str = "image",
) -> torch.Tensor:
    """Mix two branch outputs the Shake-Shake way.

    Args:
        x1 (torch.Tensor): first branch output, [N, C, H, W].
        x2 (torch.Tensor): second branch output, same shape.
        training (bool): random mixing if True; the expected value 0.5 * (x1 + x2) otherwise.
        forward_mode (str): "shake" (alpha ~ U(0, 1)) or "even" (alpha = 0.5).
        backward_mode (str): "shake" (an independent beta ~ U(0, 1)), "even" (beta = 0.5) or
            "keep" (beta = alpha).
        level (str): "image" (one coefficient per image) or "batch" (one for the batch).

    Returns:
        The mixed tensor.
    """
    _check_modes(forward_mode, backward_mode, level)
    if not training:
        return 0.5 * (x1 + x2)
    alpha = _coefficients(forward_mode, x1, level)
    beta = alpha if backward_mode == "keep" else _coefficients(backward_mode, x1, level)
    return _ShakeShakeFunction.apply(x1, x2, alpha, beta)


def _check_modes(forward_mode: str, backward_mode: str, level: str) -> None:
    for key, value, allowed in (
        ("forward_mode", forward_mode, FORWARD_MODES),
        ("backward_mode", backward_mode, BACKWARD_MODES),
        ("shake_level", level, SHAKE_LEVELS),
    ):
        if value not in allowed:
            raise InputError(f"{key}={value!r} is not supported; expected one of {list(allowed)}")


class ShakeShortcut(nn.Module):
    """Gastaldi's shortcut where the width changes: ReLU, two strided 1x1 paths, concat, BN.

    The second path sees the input shifted one pixel right and down, so after the stride-2
    subsampling the two halves of the output come from different pixels.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels (even).
        stride (int): subsampling stride (a 1x1 average pool, i.e. picking pixels).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if out_chs % 2:
            raise InputError(f"out_chs={out_chs} must be even for the two-path shortcut")
        # Not in place: the branches read the same input.
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(1, stride=stride)
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_chs, out_chs // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        shifted = F.pad(x[:, :, :-1, :-1], (1, 0, 1, 0))
        x = torch.cat([self.conv1(self.pool(x)), self.conv2(self.pool(shifted))], dim=1)
        return self.bn(x)


def _make_branch(
    block: str,
    in_chs: int,
    out_chs: int,
    *,
    stride: int,
    mid_chs: int,
    groups: int,
    se: nn.Module | None,
) -> nn.Sequential:
    """One residual branch; it starts with a ReLU that must not act in place (shared input)."""
    if block == "basic":
        widths = [(in_chs, out_chs, 3, stride, 1), (out_chs, out_chs, 3, 1, 1)]
    else:
        widths = [
            (in_chs, mid_chs, 1, 1, 1),
            (mid_chs, mid_chs, 3, stride, groups),
            (mid_chs, out_chs, 1, 1, 1),
        ]
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, cout, kernel, conv_stride, conv_groups) in enumerate(widths, start=1):
        conv = nn.Conv2d(
            cin,
            cout,
            kernel,
            stride=conv_stride,
            padding=kernel // 2,
            groups=conv_groups,
            bias=False,
        )
        layers += [
            (f"act{i}", nn.ReLU(inplace=i > 1)),
            (f"conv{i}", conv),
            (f"bn{i}", nn.BatchNorm2d(cout)),
        ]
    if se is not None:
        layers.append(("se", se))
    return nn.Sequential(OrderedDict(layers))


class ShakeShakeBlock(nn.Module):
    """Two residual branches mixed by Shake-Shake, plus a shortcut.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels.
        block (str): "basic" (ReLU-conv3x3-BN-ReLU-conv3x3-BN branches) or "bottleneck"
            (ReLU-conv1x1-BN-ReLU-conv3x3(grouped)-BN-ReLU-conv1x1-BN branches).
        stride (int): stride of the block's (first) 3x3 conv and of the shortcut.
        mid_chs (int): bottleneck width (bottleneck only).
        groups (int): groups of the bottleneck's 3x3 conv.
        forward_mode (str): "shake" or "even" (see ``shake_shake``).
        backward_mode (str): "shake", "even" or "keep".
        shake_level (str): "image" or "batch".
        se (SEConfig | None): SE configuration; None for a plain block.
        stage (int): stage number (1..3), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        block: str = "basic",
        stride: int = 1,
        mid_chs: int = 0,
        groups: int = 1,
        forward_mode: str = "shake",
        backward_mode: str = "shake",
        shake_level: str = "image",
        se: SEConfig | None = None,
        stage: int = 1,
    ) -> None:
        super().__init__()
        _check_modes(forward_mode, backward_mode, shake_level)
        self.forward_mode = forward_mode
        self.backward_mode = backward_mode
        self.shake_level = shake_level
        branch_args = dict(stride=stride, mid_chs=mid_chs, groups=groups)
        self.branch1 = _make_branch(
            block, in_chs, out_chs, se=make_se(se, out_chs, stage), **branch_args
        )
        self.branch2 = _make_branch(
            block, in_chs, out_chs, se=make_se(se, out_chs, stage), **branch_args
        )
        if in_chs != out_chs or stride != 1:
            self.shortcut: nn.Module = ShakeShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = shake_shake(
            self.branch1(x),
            self.branch2(x),
            training=self.training,
            forward_mode=self.forward_mode,
            backward_mode=self.backward_mode,
            level=self.shake_level,
        )
        return mixed + self.shortcut(x)


class ShakeShakeNet(Backbone):
    """Three-stage Shake-Shake ResNet (or ResNeXt) for 32x32 inputs, optionally with SE.

    Args:
        layers (Sequence[int]): blocks per stage ((4, 4, 4) for depth 26 with basic blocks).
        num_classes (int): classifier outputs; 0 for none (10).
        in_chans (int): input channels (3).
        block (str): branch type, "basic" or "bottleneck" (ResNeXt, output width = 3x3 width).
        widths (Sequence[int]): output channels per stage ((96, 192, 384) for 2x96d).
        cardinality (int): groups of the bottleneck's 3x3 conv (1; 4 for 2x4x64d).
        base_width (int): width per group of the bottleneck's 3x3 conv at stage 1, doubled per
            stage (64 for 2x4x64d); unused by basic blocks.
        stem_width (int): channels of the conv3x3-BN stem (16; 64 for Shake-Even 29).
        forward_mode (str): "shake" (alpha ~ U(0, 1) per image in training) or "even" (0.5).
        backward_mode (str): "shake" (independent beta ~ U(0, 1)), "even" (0.5) or "keep"
            (beta = alpha).
        shake_level (str): "image" (a coefficient per image, Gastaldi's best) or "batch".
        drop_rate (float): dropout before the classifier (0.0).
        se (SEConfig | None): SE configuration (None: plain); one SE block per branch, stages
            numbered 1..3. Built from ``se_*`` keywords by ``create_model``.
    """

    default_input_size = (3, 32, 32)
    se_stage_ids = (1, 2, 3)
    se_placements = ("standard",)

    def __init__(
        self,
        layers: Sequence[int] = (4, 4, 4),
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        block: str = "basic",
        widths: Sequence[int] = (96, 192, 384),
        cardinality: int = 1,
        base_width: int = 64,
        stem_width: int = 16,
        forward_mode: str = "shake",
        backward_mode: str = "shake",
        shake_level: str = "image",
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
        _check_modes(forward_mode, backward_mode, shake_level)
        # Gastaldi's stem has no ReLU: every branch and projection shortcut starts with one.
        self.stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)),
                    ("bn", nn.BatchNorm2d(stem_width)),
                ]
            )
        )
        self.add_feature(stem_width, 1, "stem")
        in_chs = stem_width
        for i, (depth, out_chs) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(
                    ShakeShakeBlock(
                        in_chs,
                        out_chs,
                        block=block,
                        stride=2 if i > 0 and j == 0 else 1,
                        mid_chs=cardinality * base_width * 2**i,
                        groups=cardinality,
                        forward_mode=forward_mode,
                        backward_mode=backward_mode,
                        shake_level=shake_level,
                        se=se,
                        stage=i + 1,
                    )
                )
                in_chs = out_chs
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            if i < 2:
                self.add_feature(out_chs, 2**i, f"stage{i + 1}")
        # The last sum is not rectified; the ReLU'd map is what gets pooled (deepest feature).
        self.final_act = nn.ReLU(inplace=True)
        self.add_feature(in_chs, 4, "final_act")
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.final_act(x)


def _create_shake_shake(
    name: str, defaults: dict[str, Any], kwargs: dict[str, Any]
) -> ShakeShakeNet:
    return build_model(ShakeShakeNet, name, defaults, kwargs)


# Shake-Shake-Image 26 2x96d, CIFAR-10: (26 - 2) / 6 = 4 basic blocks per stage.
_SHAKE26_2X96D = dict(
    layers=(4, 4, 4),
    block="basic",
    widths=(96, 192, 384),
    stem_width=16,
    forward_mode="shake",
    backward_mode="shake",
)
# Shake-Even 29 2x4x64d, CIFAR-100: a ResNeXt-29 (3 bottlenecks per stage, 4 groups of 64 at
# stage 1) with two branches, shaken forward and evenly mixed backward.
_SHAKE_EVEN29_2X4X64D = dict(
    layers=(3, 3, 3),
    block="bottleneck",
    widths=(256, 512, 1024),
    cardinality=4,
    base_width=64,
    stem_width=64,
    forward_mode="shake",
    backward_mode="even",
)


@register_model(ShakeShakeNet)
def shake_shake26_2x96d(**kwargs: Any) -> ShakeShakeNet:
    """Shake-Shake 26 2x96d for CIFAR-10 (Table 4)."""
    return _create_shake_shake("shake_shake26_2x96d", dict(_SHAKE26_2X96D), kwargs)


@register_model(ShakeShakeNet)
def se_shake_shake26_2x96d(**kwargs: Any) -> ShakeShakeNet:
    """SE-Shake-Shake 26 2x96d for CIFAR-10 (Table 4)."""
    return _create_shake_shake("se_shake_shake26_2x96d", dict(_SHAKE26_2X96D, se=True), kwargs)


@register_model(ShakeShakeNet)
def shake_even29_2x4x64d(**kwargs: Any) -> ShakeShakeNet:
    """Shake-Even 29 2x4x64d (Table 5; set num_classes=100 for CIFAR-100)."""
    return _create_shake_shake("shake_even29_2x4x64d", dict(_SHAKE_EVEN29_2X4X64D), kwargs)


@register_model(ShakeShakeNet)
def se_shake_even29_2x4x64d(**kwargs: Any) -> ShakeShakeNet:
    """SE-Shake-Even 29 2x4x64d (Table 5; set num_classes=100 for CIFAR-100)."""
    defaults = dict(_SHAKE_EVEN29_2X4X64D, se=True)
    return _create_shake_shake("se_shake_even29_2x4x64d", defaults, kwargs)
