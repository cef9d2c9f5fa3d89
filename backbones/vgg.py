"""VGG-16 with batch normalisation, plain and with SE blocks.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition"
(arXiv:1409.1556), configuration D; Hu et al., "Squeeze-and-Excitation Networks"
(arXiv:1709.01507), Sec. 4 (an SE block "after the non-linearity following each convolution")
and Table 2 (VGG-16 trained with BN after every convolution: 15.47 -> 15.48 GMACs).
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
from .layers.conv import conv_bn_act
from .layers.se import SEConfig, make_se

__all__ = ["VGG"]

# Configuration D: conv widths of the five blocks; each block ends with a 2x2/2 max-pool.
_VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _conv_bn_act_se(in_chs: int, out_chs: int, se: SEConfig | None, stage: int) -> nn.Sequential:
    # The conv keeps its bias, as in VGG-16 and the public vgg16_bn weights (torchvision, timm).
    unit = conv_bn_act(in_chs, out_chs, 3, bias=True)
    se_block = make_se(se, out_chs, stage)
    if se_block is not None:
        unit.add_module("se", se_block)
    return unit


class VGG(Backbone):
    """VGG with BN after every conv, an optional SE block after every conv's ReLU, and the
    original fc6-fc7-fc8 classifier.

    The head is ``global_pool`` (adaptive average pool to 7x7, an identity at 224x224, so other
    input sizes work) -> flatten -> ``pre_logits`` (fc6, ReLU, dropout, fc7, ReLU) ->
    ``head_drop`` -> ``fc`` (fc8). ``num_features`` is fc7's width, so ``forward_head(x,
    pre_logits=True)`` returns fc7's output and ``reset_classifier`` replaces only fc8.

    Args:
        widths (Sequence[Sequence[int]]): conv widths of each block (configuration D).
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        mlp_width (int): width of fc6 and fc7 (4096).
        drop_rate (float): dropout after fc6 and after fc7 (0.5, as in the original).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``; ``se_stages`` numbers the conv blocks 1..5.
    """

    se_stage_ids = (1, 2, 3, 4, 5)
    se_placements = ("standard",)

    def __init__(
        self,
        widths: Sequence[Sequence[int]] = _VGG16_WIDTHS,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_width: int = 4096,
        drop_rate: float = 0.5,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or any(len(block) == 0 for block in widths):
            raise InputError(f"widths must give 5 non-empty conv blocks, got {widths}")
        in_chs = in_chans
        for i, block in enumerate(widths):
            units = []
            for out_chs in block:
                units.append(_conv_bn_act_se(in_chs, out_chs, se, stage=i + 1))
                in_chs = out_chs
            self.add_module(f"stage{i + 1}", nn.Sequential(*units, nn.MaxPool2d(2, stride=2)))
            self.add_feature(in_chs, 2 ** (i + 1), f"stage{i + 1}")
        self.pre_logits = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(in_chs * 7 * 7, mlp_width)),
            ("act6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(drop_rate)),
            ("fc7", nn.Linear(mlp_width, mlp_width)),
            ("act7", nn.ReLU(inplace=True)),
        ]))
        # fc6 reads a 7x7 map: pooling to 7x7 is the identity at 224 and lets other sizes work.
        self.init_head(mlp_width, num_classes, drop_rate, pool_size=7)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(x))
        return self.stage5(self.stage4(self.stage3(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pre_logits(self.global_pool(x).flatten(1)))
        return x if pre_logits else self.fc(x)


def _create_vgg(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> VGG:
    return build_model(VGG, name, defaults, kwargs)


@register_model(VGG)
def vgg16_bn(**kwargs: Any) -> VGG:
    """VGG-16 (configuration D) with BN after every conv (Table 2's baseline)."""
    return _create_vgg("vgg16_bn", dict(widths=_VGG16_WIDTHS), kwargs)


@register_model(VGG)
def se_vgg16_bn(**kwargs: Any) -> VGG:
    """SE-VGG-16: an SE block after every conv's ReLU (Table 2)."""
    return _create_vgg("se_vgg16_bn", dict(widths=_VGG16_WIDTHS, se=True), kwargs)
