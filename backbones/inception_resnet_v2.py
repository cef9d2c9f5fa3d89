"""Inception-ResNet-v2, plain and with SE blocks (SE-Inception-ResNet-v2).

Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning" (arXiv:1602.07261), Figs. 3, 7, 15-19; Hu et al., "Squeeze-and-Excitation Networks"
(arXiv:1709.01507), Sec. 4 and Table 2: one SE block on the residual branch of every
Inception-ResNet module, before the (scaled) sum, as in SE-ResNet. Native input 299x299.

Two definitions of the network exist, and the family builds both (constructor arguments):

* ``PAPER_SCHEMA``, the Inception-v4 paper's Fig. 15: the Inception-v4 stem of Fig. 3
  (35x35x384), 5 A blocks, Reduction-A with (k, l, m, n) = (256, 256, 384, 384) (17x17x1152),
  10 B blocks, Reduction-B (8x8x2144), 5 C blocks, average pool. Figs. 17 and 19 print 1154 and
  2048 as the B and C output widths; those cannot be added to their 1152/2144-channel inputs,
  so the block widths here follow the inputs. 9.26 GMACs with ``model_complexity``.
* ``TF_SLIM``, the released model (TF-slim ``inception_resnet_v2``, timm's): a conv stem plus
  mixed_5b (35x35x320), 10 A, 20 B (1088 channels), 10 C (2080) blocks, the last C block with
  scale 1.0 and no ReLU, and a final 1x1 conv to 1536 channels. 13.16 GMACs.

The SENet paper's re-implementation costs 11.75 GMACs (11.76 with SE). Neither definition is
within 1.5% of it (TF-slim +12.0%, the paper schema -21.2%), so ``inception_resnet_v2`` is the
closer one, TF-slim, which is also the one with public weights. Residual scales are TF-slim's:
0.17 (A), 0.10 (B), 0.20 (C), applied to the branch output after the SE block.
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

__all__ = ["InceptionResNetV2", "InceptionResNetBlock", "PAPER_SCHEMA", "TF_SLIM"]

# TF-slim's release, the registered `inception_resnet_v2` (13.16 GMACs at 299x299).
TF_SLIM: dict[str, Any] = dict(
    layers=(10, 20, 10), stem="slim", head_chs=1536, last_block_linear=True
)
# The Inception-v4 paper's Fig. 15 schema (9.26 GMACs at 299x299); pass as keyword arguments,
# e.g. ``create_model("inception_resnet_v2", **PAPER_SCHEMA)``.
PAPER_SCHEMA: dict[str, Any] = dict(
    layers=(5, 10, 5), stem="v4", head_chs=0, last_block_linear=False
)
STEMS = ("slim", "v4")


def _conv(in_chs: int, out_chs: int, kernel: int | tuple[int, int], stride: int = 1, *,
          valid: bool = False) -> nn.Sequential:
    # eps 1e-3 as in TF-slim, whose weights are the public ones.
    return conv_bn_act(in_chs, out_chs, kernel, stride, valid=valid, bn_eps=1e-3)


class Concat(nn.ModuleList):
    """Runs every branch on the same input and concatenates the outputs along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self], 1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2)  # 3x3/2 valid


class InceptionResNetBlock(nn.Module):
    """``act(x + scale * SE(up(concat(branches(x)))))``, Figs. 16, 17 and 19 (A, B, C).

    The "up" 1x1 conv is linear (a bias, no BN, no ReLU), as in TF-slim.

    Args:
        chs (int): input and output channels.
        kind (str): "A" (35x35), "B" (17x17) or "C" (8x8).
        scale (float): residual scale of the branch output (after the SE block).
        act (bool): ReLU after the sum (False for TF-slim's last C block).
        se (SEConfig | None): SE configuration; None for a plain block.
        stage (int): 1, 2 or 3 for A, B, C, for ``se.stages``.
    """

    def __init__(
        self,
        chs: int,
        kind: str,
        *,
        scale: float = 1.0,
        act: bool = True,
        se: SEConfig | None = None,
        stage: int = 1,
    ) -> None:
        super().__init__()
        if kind == "A":
            self.branches = Concat(
                _conv(chs, 32, 1),
                nn.Sequential(_conv(chs, 32, 1), _conv(32, 32, 3)),
                nn.Sequential(_conv(chs, 32, 1), _conv(32, 48, 3), _conv(48, 64, 3)),
            )
            mid_chs = 128
        elif kind == "B":
            self.branches = Concat(
                _conv(chs, 192, 1),
                nn.Sequential(_conv(chs, 128, 1), _conv(128, 160, (1, 7)), _conv(160, 192, (7, 1))),
            )
            mid_chs = 384
        elif kind == "C":
            self.branches = Concat(
                _conv(chs, 192, 1),
                nn.Sequential(_conv(chs, 192, 1), _conv(192, 224, (1, 3)), _conv(224, 256, (3, 1))),
            )
            mid_chs = 448
        else:
            raise InputError(f"kind={kind!r} is not supported; expected 'A', 'B' or 'C'")
        self.up = nn.Conv2d(mid_chs, chs, 1)
        self.se = make_se(se, chs, stage)
        self.scale = scale
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.up(self.branches(x))
        if self.se is not None:
            branch = self.se(branch)
        return self.act(x + self.scale * branch)


def _make_stem(stem: str, in_chans: int) -> tuple[nn.Module, nn.Module, nn.Module, int]:
    """Three pieces ending at reductions 2, 4 and 8 (147, 71 and 35 pixels at 299), and the
    channels of the 35x35 map."""
    stem1 = nn.Sequential(
        _conv(in_chans, 32, 3, 2, valid=True), _conv(32, 32, 3, valid=True), _conv(32, 64, 3)
    )
    if stem == "v4":  # Fig. 3
        stem2 = nn.Sequential(
            Concat(_pool(), _conv(64, 96, 3, 2, valid=True)),  # 73x73x160
            Concat(
                nn.Sequential(_conv(160, 64, 1), _conv(64, 96, 3, valid=True)),
                nn.Sequential(
                    _conv(160, 64, 1),
                    _conv(64, 64, (7, 1)),
                    _conv(64, 64, (1, 7)),
                    _conv(64, 96, 3, valid=True),
                ),
            ),  # 71x71x192
        )
        return stem1, stem2, Concat(_conv(192, 192, 3, 2, valid=True), _pool()), 384
    if stem == "slim":  # TF-slim: conv2d_1a..conv2d_4a, maxpool_5a, mixed_5b
        stem2 = nn.Sequential(_pool(), _conv(64, 80, 1), _conv(80, 192, 3, valid=True))
        mixed_5b = Concat(
            _conv(192, 96, 1),
            nn.Sequential(_conv(192, 48, 1), _conv(48, 64, 5)),
            nn.Sequential(_conv(192, 64, 1), _conv(64, 96, 3), _conv(96, 96, 3)),
            nn.Sequential(
                nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _conv(192, 64, 1)
            ),
        )
        return stem1, stem2, nn.Sequential(_pool(), mixed_5b), 320
    raise InputError(f"stem={stem!r} is not supported; expected one of {list(STEMS)}")


def _reduction_a(chs: int, widths: Sequence[int]) -> Concat:
    """Fig. 7: 3x3/2 (n) | 1x1 (k) -> 3x3 (l) -> 3x3/2 (m) | max-pool; chs + n + m channels."""
    k, l_, m, n = widths
    return Concat(
        _conv(chs, n, 3, 2, valid=True),
        nn.Sequential(_conv(chs, k, 1), _conv(k, l_, 3), _conv(l_, m, 3, 2, valid=True)),
        _pool(),
    )


def _reduction_b(chs: int) -> Concat:
    """Fig. 18: three 1x1 -> 3x3/2 branches (384, 288, 288 -> 320) | max-pool; chs + 992."""
    return Concat(
        nn.Sequential(_conv(chs, 256, 1), _conv(256, 384, 3, 2, valid=True)),
        nn.Sequential(_conv(chs, 256, 1), _conv(256, 288, 3, 2, valid=True)),
        nn.Sequential(_conv(chs, 256, 1), _conv(256, 288, 3), _conv(288, 320, 3, 2, valid=True)),
        _pool(),
    )


class InceptionResNetV2(Backbone):
    """Inception-ResNet-v2 with an optional SE block in every Inception-ResNet module.

    Top-level children in forward order (feature reduction in brackets; "V" convs make the maps
    slightly smaller than input / reduction, e.g. 147, 71, 35, 17, 8 at 299): ``stem1`` [2],
    ``stem2`` [4], ``stem3``, ``blocks_a`` [8], ``reduction_a``, ``blocks_b`` [16],
    ``reduction_b``, ``blocks_c`` [32 unless there is a head conv], ``conv_head`` [32].
    ``se_stages``: 1 = A blocks, 2 = B blocks, 3 = C blocks.

    Args:
        layers (Sequence[int]): numbers of A, B and C blocks ((10, 20, 10); paper: (5, 10, 5)).
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        stem (str): "slim" (TF-slim stem + mixed_5b, 320 channels at 35x35) or "v4" (Fig. 3,
            384 channels).
        reduction_a (Sequence[int]): Reduction-A's (k, l, m, n) ((256, 256, 384, 384)).
        residual_scales (Sequence[float]): scales of the A, B and C branch outputs
            ((0.17, 0.1, 0.2)).
        last_block_linear (bool): TF-slim's last C block: scale 1.0 and no ReLU after the sum
            (True).
        head_chs (int): width of a final 1x1 conv-BN-ReLU (1536, TF-slim); 0 for none (paper).
        drop_rate (float): dropout before the classifier (0.2: keep probability 0.8 in both
            sources).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``.
    """

    default_input_size = (3, 299, 299)
    se_stage_ids = (1, 2, 3)
    se_placements = ("standard",)

    def __init__(
        self,
        layers: Sequence[int] = (10, 20, 10),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "slim",
        reduction_a: Sequence[int] = (256, 256, 384, 384),
        residual_scales: Sequence[float] = (0.17, 0.1, 0.2),
        last_block_linear: bool = True,
        head_chs: int = 1536,
        drop_rate: float = 0.2,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 3 or any(not isinstance(d, int) or d < 1 for d in layers):
            raise InputError(f"layers must give 3 positive block counts (A, B, C), got {layers}")
        if len(residual_scales) != 3:
            raise InputError(f"residual_scales must give 3 scales (A, B, C), got {residual_scales}")
        if len(reduction_a) != 4:
            raise InputError(f"reduction_a must give (k, l, m, n), got {reduction_a}")
        if head_chs < 0:
            raise InputError(f"head_chs must be >= 0 (0: no head conv), got {head_chs}")
        self.stem1, self.stem2, self.stem3, chs = _make_stem(stem, in_chans)
        self.add_feature(64, 2, "stem1")
        self.add_feature(192, 4, "stem2")
        for i, kind in enumerate("ABC"):
            if kind == "B":
                self.reduction_a = _reduction_a(chs, reduction_a)
                chs += reduction_a[2] + reduction_a[3]
            elif kind == "C":
                self.reduction_b = _reduction_b(chs)
                chs += 992
            blocks = []
            for j in range(layers[i]):
                last = last_block_linear and kind == "C" and j == layers[i] - 1
                blocks.append(
                    InceptionResNetBlock(
                        chs,
                        kind,
                        scale=1.0 if last else residual_scales[i],
                        act=not last,
                        se=se,
                        stage=i + 1,
                    )
                )
            self.add_module(f"blocks_{kind.lower()}", nn.Sequential(*blocks))
            if kind != "C" or not head_chs:
                self.add_feature(chs, 8 * 2**i, f"blocks_{kind.lower()}")
        self.conv_head = _conv(chs, head_chs, 1) if head_chs else None
        if head_chs:
            chs = head_chs
            self.add_feature(chs, 32, "conv_head")
        self.init_head(chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks_a(self.stem3(self.stem2(self.stem1(x))))
        x = self.blocks_b(self.reduction_a(x))
        x = self.blocks_c(self.reduction_b(x))
        return x if self.conv_head is None else self.conv_head(x)


def _create_inception_resnet_v2(
    name: str, defaults: dict[str, Any], kwargs: dict[str, Any]
) -> InceptionResNetV2:
    return build_model(InceptionResNetV2, name, defaults, kwargs)


@register_model(InceptionResNetV2)
def inception_resnet_v2(**kwargs: Any) -> InceptionResNetV2:
    """Inception-ResNet-v2, TF-slim release (closest to the SENet paper's 11.75 GMACs)."""
    return _create_inception_resnet_v2("inception_resnet_v2", dict(TF_SLIM), kwargs)


@register_model(InceptionResNetV2)
def se_inception_resnet_v2(**kwargs: Any) -> InceptionResNetV2:
    """SE-Inception-ResNet-v2 (Table 2): SE on every residual branch."""
    return _create_inception_resnet_v2("se_inception_resnet_v2", dict(TF_SLIM, se=True), kwargs)
