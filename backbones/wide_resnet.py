"""Wide ResNets for CIFAR (32x32), plain and with SE blocks.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146): WRN-16-8 of
Tables 4 and 5 of Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507). A WRN-d-k is
a pre-activation ResNet of basic blocks, (d - 4) / 6 per stage, with widths 16k/32k/64k, so it
reuses ``preact_resnet``'s block and trunk.
"""

from __future__ import annotations

from typing import Any

from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.se import SEConfig
from .preact_resnet import PreActResNet

__all__ = ["WideResNet"]


class WideResNet(PreActResNet):
    """WRN-``depth``-``widen_factor`` with an optional SE block in every residual block.

    Args:
        depth (int): the WRN depth d, 6n + 4 for n blocks per stage (16).
        num_classes (int): classifier outputs; 0 for none (10).
        in_chans (int): input channels (3).
        widen_factor (int): the width multiplier k: stage widths 16k, 32k, 64k (8).
        dropout (float): dropout between the two convs of each block (0.0; the WRN paper's
            CIFAR runs use 0.3 for some models).
        drop_rate (float): dropout before the classifier (0.0).
        se (SEConfig | None): SE configuration (None: plain); stages are numbered 1..3. Built
            from ``se_*`` keywords by ``create_model``.
    """

    # Basic blocks only: there is no 3x3 site distinct from "standard".
    se_placements = ("standard", "pre", "post", "identity")

    def __init__(
        self,
        depth: int = 16,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        widen_factor: int = 8,
        dropout: float = 0.0,
        drop_rate: float = 0.0,
        se: SEConfig | None = None,
    ) -> None:
        if depth < 10 or (depth - 4) % 6 != 0:
            raise InputError(f"depth={depth} is not a WRN depth; expected 6n + 4 with n >= 1")
        if widen_factor < 1:
            raise InputError(f"widen_factor={widen_factor} must be a positive int")
        n = (depth - 4) // 6
        super().__init__(
            (n, n, n),
            num_classes=num_classes,
            in_chans=in_chans,
            block="basic",
            widths=tuple(w * widen_factor for w in (16, 32, 64)),
            stem_width=16,
            dropout=dropout,
            drop_rate=drop_rate,
            se=se,
        )


def _create_wide_resnet(name: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> WideResNet:
    return build_model(WideResNet, name, defaults, kwargs)


@register_model(WideResNet)
def wrn16_8(**kwargs: Any) -> WideResNet:
    """WRN-16-8 for CIFAR (Tables 4 and 5)."""
    return _create_wide_resnet("wrn16_8", dict(depth=16, widen_factor=8), kwargs)


@register_model(WideResNet)
def se_wrn16_8(**kwargs: Any) -> WideResNet:
    """SE-WRN-16-8 for CIFAR (Tables 4 and 5)."""
    return _create_wide_resnet("se_wrn16_8", dict(depth=16, widen_factor=8, se=True), kwargs)
