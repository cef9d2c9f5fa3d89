"""BN-Inception, plain and with SE blocks (SE-Inception).

Ioffe and Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift" (arXiv:1502.03167), the Inception network of Fig. 5 / the appendix: GoogLeNet
with BN after every conv, each 5x5 conv replaced by two 3x3 convs, and stride-2 modules (3c, 4e)
that drop the 1x1 branch and pass a max-pooled copy of their input through. The channel table is
the paper's Fig. 5, which is also the public Caffe ``bn_inception`` model. Hu et al.,
"Squeeze-and-Excitation Networks" (arXiv:1709.01507), Sec. 4 and Fig. 2: SE-Inception takes a
whole Inception module as F_tr, i.e. one SE block on each module's concatenated output; Table 2
gives 2.03 GMACs plain and 2.04 with SE at 224x224.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import nn

from ._base import Backbone, init_weights
from ._builder import build_model
from ._registry import register_model
from .errors import InputError
from .layers.conv import conv_bn_act
from .layers.se import SEConfig, make_se

__all__ = ["BNInception", "InceptionModule"]


class ModuleSpec(NamedTuple):
    """One row of Fig. 5 of the BN-Inception paper (0 in ``b1x1``/``pool_proj``: no such conv)."""

    b1x1: int
    b3x3_reduce: int
    b3x3: int
    d3x3_reduce: int
    d3x3: int
    pool: str  # "avg" or "max"
    pool_proj: int  # 0: the pooled input passes through unprojected (stride-2 modules)
    stride: int


# Fig. 5, module by module; the first character of the name is the paper's group (3, 4, 5).
BN_INCEPTION_MODULES: dict[str, ModuleSpec] = {
    "3a": ModuleSpec(64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": ModuleSpec(64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": ModuleSpec(0, 128, 160, 64, 96, "max", 0, 2),
    "4a": ModuleSpec(224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": ModuleSpec(192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": ModuleSpec(160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": ModuleSpec(96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": ModuleSpec(0, 128, 192, 192, 256, "max", 0, 2),
    "5a": ModuleSpec(352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": ModuleSpec(352, 192, 320, 192, 224, "max", 128, 1),
}


class InceptionModule(nn.Module):
    """Four-branch Inception module (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1) + optional SE.

    A stride-2 module has no 1x1 branch, puts the stride on the last conv of each 3x3 branch and
    concatenates its max-pooled input unprojected. The SE block rescales the concatenation.

    Args:
        in_chs (int): input channels.
        spec (ModuleSpec): the module's row of the channel table.
        se (SEConfig | None): SE configuration; None for a plain module.
        stage (int): the paper's module group (3, 4 or 5), for ``se.stages``.
    """

    def __init__(
        self, in_chs: int, spec: ModuleSpec, *, se: SEConfig | None = None, stage: int = 3
    ) -> None:
        super().__init__()
        if spec.pool not in ("avg", "max"):
            raise InputError(f"pool={spec.pool!r} is not supported; expected 'avg' or 'max'")
        s = spec.stride
        self.branch1x1 = conv_bn_act(in_chs, spec.b1x1, 1) if spec.b1x1 else None
        self.branch3x3 = nn.Sequential(
            conv_bn_act(in_chs, spec.b3x3_reduce, 1),
            conv_bn_act(spec.b3x3_reduce, spec.b3x3, 3, stride=s),
        )
        self.branch3x3dbl = nn.Sequential(
            conv_bn_act(in_chs, spec.d3x3_reduce, 1),
            conv_bn_act(spec.d3x3_reduce, spec.d3x3, 3),
            conv_bn_act(spec.d3x3, spec.d3x3, 3, stride=s),
        )
        # padding=1 on the strided pool: the same output size as the strided 3x3 convs for any
        # input (Caffe's ceil-mode pool without padding agrees only on even sizes, e.g. 224).
        pool_cls = nn.AvgPool2d if spec.pool == "avg" else nn.MaxPool2d
        pool: list[nn.Module] = [pool_cls(3, stride=s, padding=1)]
        if spec.pool_proj:
            pool.append(conv_bn_act(in_chs, spec.pool_proj, 1))
        self.branch_pool = nn.Sequential(*pool)
        self.out_chs = spec.b1x1 + spec.b3x3 + spec.d3x3 + (spec.pool_proj or in_chs)
        self.se = make_se(se, self.out_chs, stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            outs.insert(0, self.branch1x1(x))
        x = torch.cat(outs, 1)
        return x if self.se is None else self.se(x)


class BNInception(Backbone):
    """BN-Inception with an optional SE block on every Inception module (SE-Inception).

    Top-level children, in forward order (feature reduction in brackets): ``stem1`` (7x7/2
    conv [2]), ``pool1``, ``stem2`` (1x1 and 3x3 convs [4]), ``pool2``, ``stage3`` (3a, 3b [8]),
    ``stage4`` (3c, 4a-4d [16]), ``stage5`` (4e, 5a, 5b [32]). Each top-level stage ends at the
    resolution it names, so the stride-2 modules 3c and 4e open ``stage4``/``stage5``.

    ``se_stages`` uses the paper's module groups instead: 3 = modules 3a-3c, 4 = 4a-4e,
    5 = 5a-5b. So ``se_stages=(3,)`` puts SE blocks on 3a and 3b (in ``stage3``) and on 3c (in
    ``stage4``).

    Args:
        num_classes (int): classifier outputs; 0 for none (1000).
        in_chans (int): input channels (3).
        drop_rate (float): dropout before the classifier (0.0; the BN-Inception paper removed
            GoogLeNet's dropout).
        se (SEConfig | None): SE configuration (None: plain). Built from ``se_*`` keywords by
            ``create_model``.
    """

    se_stage_ids = (3, 4, 5)
    se_placements = ("standard",)

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        self.stem1 = conv_bn_act(in_chans, 64, 7, stride=2)
        self.add_feature(64, 2, "stem1")
        # Caffe's stem pools: 3x3/2, no padding, ceil mode (224 -> 112 -> 56 -> 28).
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.stem2 = nn.Sequential(conv_bn_act(64, 64, 1), conv_bn_act(64, 192, 3))
        self.add_feature(192, 4, "stem2")
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        in_chs = 192
        # Top-level grouping by output resolution; SE stage = module group (first character).
        groups = {
            "stage3": ("3a", "3b"),
            "stage4": ("3c", "4a", "4b", "4c", "4d"),
            "stage5": ("4e", "5a", "5b"),
        }
        for reduction, (child, names) in zip((8, 16, 32), groups.items(), strict=True):
            modules = OrderedDict()
            for name in names:
                spec = BN_INCEPTION_MODULES[name]
                modules[f"inception_{name}"] = InceptionModule(
                    in_chs, spec, se=se, stage=int(name[0])
                )
                in_chs = modules[f"inception_{name}"].out_chs
            self.add_module(child, nn.Sequential(modules))
            self.add_feature(in_chs, reduction, child)
        self.init_head(in_chs, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.stem2(self.pool1(self.stem1(x))))
        return self.stage5(self.stage4(self.stage3(x)))


def _create_bn_inception(
    name: str, defaults: dict[str, Any], kwargs: dict[str, Any]
) -> BNInception:
    return build_model(BNInception, name, defaults, kwargs)


@register_model(BNInception)
def bn_inception(**kwargs: Any) -> BNInception:
    """BN-Inception (Ioffe and Szegedy, Fig. 5)."""
    return _create_bn_inception("bn_inception", dict(), kwargs)


@register_model(BNInception)
def se_bn_inception(**kwargs: Any) -> BNInception:
    """SE-BN-Inception: an SE block on every Inception module (Fig. 2, Table 2)."""
    return _create_bn_inception("se_bn_inception", dict(se=True), kwargs)
