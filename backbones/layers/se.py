"""The Squeeze-and-Excitation block and its configuration.

Hu et al., "Squeeze-and-Excitation Networks", TPAMI 2019 (arXiv:1709.01507), Sec. 3 and the
ablations of Sec. 6-7: reduction ratio (Table 10), squeeze operator (Tables 11 and 16), excitation
gate (Table 12), stages (Table 13) and placement (Fig. 5, Tables 14 and 15).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

SQUEEZES = ("avg", "max", "none")
GATES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
PLACEMENTS = ("standard", "pre", "post", "identity", "3x3")


class SEBlock(nn.Module):
    """Squeeze (global pool), excite (FC-ReLU-FC-gate), rescale the channels of the input.

    Args:
        channels (int): channels of the input and of the excitation vector.
        rd_ratio (float): hidden width as a fraction of ``channels`` (1/16, the paper's r = 16).
        rd_channels (int | None): explicit hidden width; overrides ``rd_ratio``.
        rd_divisor (int): round the hidden width down to a multiple of this (1: the paper's C // r).
        squeeze (str): "avg" (default), "max", or "none": the NoSqueeze variant of Table 16, whose
            FC layers become 1x1 convolutions over the full map (same parameters).
        gate (str): "sigmoid" (default), "tanh" or "relu" (Table 12).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        *,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        squeeze: str = "avg",
        gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        if rd_channels is None:
            rd_channels = int(channels * rd_ratio + 1e-6) // rd_divisor * rd_divisor
        self.squeeze = squeeze
        # Linear layers on [N, C] rather than 1x1 convs on [N, C, 1, 1]: fewer reshapes, and the
        # same weights (up to a view) as timm's conv-based SE modules.
        self.fc1 = nn.Linear(channels, max(1, rd_channels))
        self.fc2 = nn.Linear(max(1, rd_channels), channels)
        # A module of its own, so forward hooks on `gate` see the excitation vector.
        self.gate = GATES[gate]()

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale, shaped to broadcast against ``x``."""
        n, c, h, w = x.shape
        if self.squeeze == "none":
            s = F.conv2d(x, self.fc1.weight[:, :, None, None], self.fc1.bias).relu_()
            return self.gate(F.conv2d(s, self.fc2.weight[:, :, None, None], self.fc2.bias))
        # At batch 1 SE costs more in per-op overhead than in arithmetic, so this path has the
        # fewest operators: functional FC layers, an in-place ReLU, a view rather than indexing.
        if self.squeeze == "avg":
            # The mean's 1/HW rides on fc1's matmul (alpha) instead of a division of its own.
            s = torch.addmm(self.fc1.bias, x.sum((2, 3)), self.fc1.weight.t(), alpha=1.0 / (h * w))
        else:
            s = F.linear(x.amax((2, 3)), self.fc1.weight, self.fc1.bias)
        s = F.linear(s.relu_(), self.fc2.weight, self.fc2.bias)
        return self.gate(s).view(n, c, 1, 1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` rescaled by its excitation; plus ``residual`` if given.

        Passing the residual lets the rescale and the residual sum run as one ``addcmul``: one
        pass over memory instead of two, which is most of what SE costs at inference.
        """
        scale = self.excitation(x)
        return x * scale if residual is None else torch.addcmul(residual, x, scale)


SqueezeExcite = SEBlock


@dataclasses.dataclass(frozen=True)
class SEConfig:
    """The paper's SE knobs, shared by every block of a model.

    ``stages`` uses each family's own stage numbering (ResNet: 2..5 = conv2_x..conv5_x);
    None means every stage.
    """

    reduction: int = 16
    squeeze: str = "avg"
    gate: str = "sigmoid"
    placement: str = "standard"
    stages: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reduction, int) or isinstance(self.reduction, bool) or self.reduction < 1:
            raise InputError(f"se_reduction must be a positive int, got {self.reduction!r}")
        _check_choice("se_squeeze", self.squeeze, SQUEEZES)
        _check_choice("se_gate", self.gate, tuple(GATES))
        _check_choice("se_placement", self.placement, PLACEMENTS)

    def in_stage(self, stage: int) -> bool:
        return self.stages is None or stage in self.stages

    def block(self, channels: int) -> SEBlock:
        return SEBlock(
            channels,
            rd_channels=max(1, channels // self.reduction),
            squeeze=self.squeeze,
            gate=self.gate,
        )


class ResidualSE:
    """Mixin for residual blocks: one optional SE block at one of the paper's sites (Fig. 5).

    Sites: "pre" (on the block input, before the branch), "3x3" (inside the branch, after the 3x3
    conv), "standard" (end of the branch, before the sum), "identity" (on the shortcut),
    "post" (after the sum and its activation). A block calls ``se_at(site, x)`` at the first two
    and the last site, and ``residual_sum(branch, shortcut)`` for the sum.
    """

    se: nn.Module | None
    se_site: str | None

    def init_se(
        self, se: SEConfig | None, stage: int, *, in_chs: int, mid_chs: int, out_chs: int
    ) -> None:
        self.se_site = se.placement if se is not None and se.in_stage(stage) else None
        channels = {"pre": in_chs, "3x3": mid_chs}.get(self.se_site or "", out_chs)
        self.se = se.block(channels) if se is not None and self.se_site else None

    def se_at(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """SE at the "pre", "3x3" or "post" site, if the block has it there."""
        return self.se(x) if self.se_site == site else x

    def residual_sum(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """branch + shortcut, with SE at the "standard" or "identity" site fused into the sum."""
        if self.se_site == "standard":
            return self.se(branch, shortcut)
        if self.se_site == "identity":
            return self.se(shortcut, branch)
        return branch + shortcut


def make_se(se: SEConfig | None, channels: int, stage: int, placement: str = "standard") -> nn.Module | None:
    """The SE block for one site of a model, or None where the config puts none there."""
    if se is None or se.placement != placement or not se.in_stage(stage):
        return None
    return se.block(channels)


def _check_choice(key: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise InputError(f"{key}={value!r} is not supported; expected one of {list(allowed)}")
