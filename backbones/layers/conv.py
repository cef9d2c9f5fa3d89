"""Conv-BN-ReLU, the unit most families are built from."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def conv_bn_act(
    in_chs: int,
    out_chs: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    *,
    groups: int = 1,
    valid: bool = False,
    bias: bool = False,
    bn_eps: float = 1e-5,
) -> nn.Sequential:
    """``conv`` -> ``bn`` -> ``act`` (ReLU), with "same" padding unless ``valid``.

    ``bias`` only for architectures whose published weights carry one (VGG); ``bn_eps`` for those
    trained with another epsilon (TF-slim's 1e-3).
    """
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (0, 0) if valid else (kh // 2, kw // 2)
    conv = nn.Conv2d(in_chs, out_chs, (kh, kw), stride=stride, padding=padding, groups=groups,
                     bias=bias)
    layers = [("conv", conv), ("bn", nn.BatchNorm2d(out_chs, eps=bn_eps)),
              ("act", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(layers))
