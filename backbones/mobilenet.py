"""MobileNet (v1), plain and with SE blocks.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications" (arXiv:1704.04861), Table 1 ("1.0 MobileNet-224"); Hu et al.,
"Squeeze-and-Excitation Networks" (arXiv:1709.01507), Table 3 (4.2M -> 4.7M parameters,
569 -> 572 MMACs), with an SE block after each depthwise-separable unit's pointwise ReLU.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.conv import conv_bn_act
from .layers.se import SEConfig, make_se

__all__ = ["MobileNetV1", "DepthwiseSeparable"]

# (pointwise width, stride) of the 13 depthwise-separable units, grouped by output resolution
# (112, 56, 28, 14, 7 at 224x224): these groups are the stages 1..5 of ``se_stages``.
_MOBILENET_V1_STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


class DepthwiseSeparable(nn.Module):
    """dw3x3-BN-ReLU -> pw1x1-BN-ReLU, with an optional SE block after the pointwise ReLU.

    Args:
        in_chs (int): input channels.
        out_chs (int): output channels of the pointwise conv.
        stride (int): stride of the depthwise conv.
        se (SEConfig | None): SE configuration; None for a plain unit.
        stage (int): the stage number (1..5), for ``se.stages``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int = 1,
        se: SEConfig | None = None,
        stage: int = 1,
    ) -> None:
        super().__init__()
        self.dw = conv_bn_act(in_chs, in_chs, 3, stride=stride, groups=in_chs)
        self.pw = conv_bn_act(in_chs, out_chs, 1)
        self.se = make_se(se, out_chs, stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(x))
        return x if self.se is None else self.se(x)


class MobileNetV1(Backbone):
    """MobileNet v1 with an optional SE block in every depthwise-separable unit.

    Args:
        stages (Sequence[Sequence[tuple[int, int]]]): (pointwise width, stride) of each unit,
            grouped into the 5 stages (the 13 units of the paper's Table 1).
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        width_multiplier (float): the paper's alpha, scaling every width (1.0; 0.75, 0.5 and
            0.25 are the paper's thinner models).
        stem_width (int): width of the first 3x3/2 conv before scaling (32).
        drop_rate (float): dropout before the classifier (0.0).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``; ``se_stages`` numbers the stages by resolution, 1 (112x112) to
            5 (7x7).
    """

    se_stage_ids = (1, 2, 3, 4, 5)
    se_placements = ("standard",)

    def __init__(
        self,
        stages: Sequence[Sequence[tuple[int, int]]] = _MOBILENET_V1_STAGES,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_multiplier: float = 1.0,
        stem_width: int = 32,
        drop_rate: float = 0.0,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if not width_multiplier > 0:
            raise InputError(f"width_multiplier must be > 0, got {width_multiplier!r}")
        if len(stages) != 5 or any(len(units) == 0 for units in stages):
            raise InputError(f"stages must give 5 non-empty groups of units, got {stages}")

        def scaled(width: int) -> int:
            # Round to nearest so the paper's alphas (0.75, 0.5, 0.25) give its exact widths.
            return max(1, int(width * width_multiplier + 0.5))

        in_chs = scaled(stem_width)
        self.stem = conv_bn_act(in_chans, in_chs, 3, stride=2)
        reduction = 2
        for i, units in enumerate(stages):
            blocks = []
            for width, stride in units:
                out_chs = scaled(width)
                unit = DepthwiseSeparable(in_chs, out_chs, stride=stride, se=se, stage=i + 1)
                blocks.append(unit)
                in_chs, reduction = out_chs, reduction * stride
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            self.add_feature(in_chs, reduction, f"stage{i + 1}")
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.stage5(self.stage4(self.stage3(x)))


def _create_mobilenet(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> MobileNetV1:
    return build_model(MobileNetV1, name, defaults, kwargs)


@register_model(MobileNetV1)
def mobilenet_v1(**kwargs: Any) -> MobileNetV1:
    """1.0 MobileNet-224 (Table 3's baseline)."""
    return _create_mobilenet("mobilenet_v1", dict(width_multiplier=1.0), kwargs)


@register_model(MobileNetV1)
def se_mobilenet_v1(**kwargs: Any) -> MobileNetV1:
    """SE-MobileNet: an SE block after every unit's pointwise ReLU (Table 3)."""
    return _create_mobilenet("se_mobilenet_v1", dict(width_multiplier=1.0, se=True), kwargs)
