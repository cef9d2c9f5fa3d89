"""ShuffleNet (v1), plain and with SE blocks.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices"
(CVPR 2018, arXiv:1707.01083), Table 1 and Fig. 2; Hu et al., "Squeeze-and-Excitation Networks"
(arXiv:1709.01507), Table 3 ("ShuffleNet 1x (g=3)": 1.8M -> 2.4M parameters, 140 -> 142 MMACs),
with an SE block on each unit's residual branch before the addition or concatenation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.se import SEConfig, make_se

__all__ = ["ShuffleNetV1", "ShuffleUnit", "ChannelShuffle"]

# Output channels of stages 2..4 for each number of groups at 1x (ShuffleNet Table 1).
STAGE_WIDTHS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups, so the next grouped conv mixes them."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, with an identity (stride 1) or an
    average-pooled, concatenated (stride 2) shortcut, and an optional SE block on the branch.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels of the unit (after the concatenation when stride is 2).
        stride (int): 1 (residual sum) or 2 (concatenation with a 3x3/2 average pool).
        groups (int): groups of the 1x1 convs.
        first_groups (int): groups of the first 1x1 conv (1 for stage 2's first unit, whose
            input has only 24 channels).
        se (SEConfig | None): SE configuration; None for a plain unit.
        stage (int): the paper's stage number (2..4), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int = 1,
        groups: int = 3,
        first_groups: int | None = None,
        se: SEConfig | None = None,
        stage: int = 2,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise InputError(f"stride={stride!r} is not supported; expected 1 or 2")
        if stride == 1 and in_chs != out_chs:
            raise InputError(f"a stride-1 unit needs in_chs == out_chs, got {in_chs}, {out_chs}")
        # Bottleneck width is a quarter of the unit's output (ShuffleNet Sec. 3.3); the branch of
        # a stride-2 unit makes only the channels the pooled shortcut does not bring.
        mid_chs = out_chs // 4
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        first_groups = groups if first_groups is None else first_groups
        if mid_chs % groups or branch_chs % groups or in_chs % first_groups:
            raise InputError(
                f"ShuffleUnit({in_chs} -> {out_chs}, stride {stride}): bottleneck {mid_chs} and "
                f"branch {branch_chs} channels must be divisible by groups={groups}"
            )
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        # No ReLU after the depthwise conv (ShuffleNet Fig. 2).
        self.conv2 = nn.Conv2d(
            mid_chs, mid_chs, 3, stride=stride, padding=1, groups=mid_chs, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, branch_chs, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_chs)
        self.se = make_se(se, branch_chs, stage)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.act1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.pool is None:
            # SEBlock fuses its rescale into the residual sum when given the shortcut.
            return self.act(out + x if self.se is None else self.se(out, residual=x))
        if self.se is not None:
            out = self.se(out)
        return self.act(torch.cat([self.pool(x), out], dim=1))


class ShuffleNetV1(Backbone):
    """ShuffleNet v1 (1x) with an optional SE block in every unit.

    Args:
        layers (Sequence[int]): units per stage, stages 2..4 ((4, 8, 4)).
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        groups (int): groups of the pointwise convs, one of ShuffleNet Table 1's 1, 2, 3, 4, 8
            (3), which sets the stage widths (240, 480, 960 for g = 3).
        stem_width (int): width of the first 3x3/2 conv (24).
        drop_rate (float): dropout before the classifier (0.0).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``; ``se_stages`` uses the paper's stage numbers 2..4.
    """

    se_stage_ids = (2, 3, 4)
    se_placements = ("standard",)

    def __init__(
        self,
        layers: Sequence[int] = (4, 8, 4),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 3,
        stem_width: int = 24,
        drop_rate: float = 0.0,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if groups not in STAGE_WIDTHS:
            raise InputError(
                f"groups={groups!r} is not supported; expected one of {list(STAGE_WIDTHS)}"
            )
        if len(layers) != 3 or any(depth < 1 for depth in layers):
            raise InputError(f"layers must give 3 positive depths (stages 2..4), got {layers}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        self.add_feature(stem_width, 2, "stem")
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        in_chs = stem_width
        for i, (depth, out_chs) in enumerate(zip(layers, STAGE_WIDTHS[groups])):
            stage = i + 2
            units = []
            for j in range(depth):
                # Stage 2's first unit sees the 24-channel stem: a grouped conv there would
                # leave too few channels per group (ShuffleNet Sec. 3.3).
                first_groups = 1 if stage == 2 and j == 0 else groups
                unit = ShuffleUnit(
                    in_chs, out_chs, stride=2 if j == 0 else 1, groups=groups,
                    first_groups=first_groups, se=se, stage=stage,
                )
                units.append(unit)
                in_chs = out_chs
            self.add_module(f"stage{stage}", nn.Sequential(*units))
            # stem /2, max-pool /2, then /2 at the start of each stage: 8, 16, 32.
            self.add_feature(in_chs, 2 ** (stage + 1), f"stage{stage}")
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.stage4(self.stage3(self.stage2(x)))


def _create_shufflenet(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> ShuffleNetV1:
    return build_model(ShuffleNetV1, name, defaults, kwargs)


@register_model(ShuffleNetV1)
def shufflenet_v1_g3(**kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x (g=3) (Table 3's baseline)."""
    return _create_shufflenet("shufflenet_v1_g3", dict(groups=3), kwargs)


@register_model(ShuffleNetV1)
def se_shufflenet_v1_g3(**kwargs: Any) -> ShuffleNetV1:
    """SE-ShuffleNet 1x (g=3): an SE block on every unit's branch (Table 3)."""
    return _create_shufflenet("se_shufflenet_v1_g3", dict(groups=3, se=True), kwargs)
