"""Learning-rate schedules of the Lightning tasks, stepped after every optimizer step.

Milestones and decay periods are fractions of the whole run (``trainer.estimated_stepping_batches``),
so a recipe keeps its shape when its length changes: He et al.'s 32k/48k of 64k iterations are
``[0.5, 0.75]``, detectron2's "2x" 120k/160k of 180k are ``[0.6667, 0.8889]``. Warm-up is
He et al.'s constant low rate or detectron2's linear ramp.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import lightning
import torch

from backbones.errors import InputError

__all__ = ["SCHEDULES", "WARMUPS", "check_schedule", "lr_factor", "step_scheduler"]

SCHEDULES = ("multistep", "step", "cosine", "constant")
WARMUPS = ("constant", "linear")


def lr_factor(
    step: int,
    *,
    total_steps: float,
    schedule: str,
    milestones: Sequence[float],
    gamma: float,
    step_every: float | None,
    warmup_steps: int,
    warmup_factor: float,
    warmup: str,
) -> float:
    """Learning rate at optimizer step ``step`` as a multiple of the base learning rate.

    Args:
        step (int): optimizer steps taken so far (0 for the first update).
        total_steps (float): optimizer steps of the whole run.
        schedule (str): one of ``SCHEDULES``.
        milestones (Sequence[float]): "multistep": fractions of ``total_steps`` where the rate is
            multiplied by ``gamma``.
        gamma (float): decay factor of "multistep" and "step".
        step_every (float | None): "step": decay every this fraction of ``total_steps``.
        warmup_steps (int): steps of warm-up before the schedule takes over.
        warmup_factor (float): warm-up rate as a multiple of the base rate.
        warmup (str): "constant" (He et al.: a fixed low rate, then the jump) or "linear" (from
            ``warmup_factor`` up to the schedule's value at ``warmup_steps``).

    Returns:
        The multiplier of the base learning rate.
    """
    if step < warmup_steps:
        if warmup == "constant":
            return warmup_factor
        end = lr_factor(
            warmup_steps,
            total_steps=total_steps,
            schedule=schedule,
            milestones=milestones,
            gamma=gamma,
            step_every=step_every,
            warmup_steps=0,
            warmup_factor=warmup_factor,
            warmup=warmup,
        )
        return warmup_factor + (end - warmup_factor) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = step / total_steps
    if schedule == "multistep":
        return gamma ** sum(progress >= m for m in milestones)
    if schedule == "step":
        # The small epsilon keeps exact multiples (0.3 * 10 / 10 ...) on the decayed side.
        return gamma ** math.floor(progress / step_every + 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def check_schedule(
    schedule: str,
    milestones: Sequence[float],
    step_every: float | None,
    warmup: str,
    warmup_steps: int,
) -> None:
    """Reject a schedule :func:`lr_factor` cannot run, naming the argument (an ``InputError``)."""
    if schedule not in SCHEDULES:
        raise InputError(f"schedule={schedule!r} is not supported; expected one of {SCHEDULES}")
    if warmup not in WARMUPS:
        raise InputError(f"warmup={warmup!r} is not supported; expected one of {WARMUPS}")
    if warmup_steps < 0:
        raise InputError(f"warmup_steps={warmup_steps} must be >= 0")
    if schedule == "multistep" and (
        list(milestones) != sorted(milestones) or any(not 0 < m <= 1 for m in milestones)
    ):
        raise InputError(
            f"milestones={list(milestones)} must be increasing fractions of the run in (0, 1], "
            "e.g. [0.5, 0.75] for 32k and 48k of 64k iterations"
        )
    if schedule == "step" and (step_every is None or not 0 < step_every <= 1):
        raise InputError(
            f"schedule='step' needs step_every, a fraction of the run in (0, 1] "
            f"(e.g. 0.3: every 30 of 100 epochs); got step_every={step_every}"
        )


def step_scheduler(
    trainer: lightning.Trainer, optimizer: torch.optim.Optimizer, *, schedule: str, **kwargs: Any
) -> dict[str, Any]:
    """The schedule as Lightning's ``lr_scheduler`` entry, stepped after every optimizer step.

    Args:
        trainer: its ``estimated_stepping_batches`` is the run's length.
        optimizer: the optimizer whose rate is scheduled.
        schedule: one of ``SCHEDULES``.
        **kwargs: the other keywords of :func:`lr_factor` (``milestones``, ``gamma``, ...).

    Raises:
        InputError: the schedule needs the run's length and the trainer cannot estimate it.
    """
    total_steps = trainer.estimated_stepping_batches
    if schedule != "constant" and not math.isfinite(total_steps):
        raise InputError(
            f"schedule={schedule!r} needs the run's length, but the trainer cannot estimate it; "
            "set --trainer.max_epochs or --trainer.max_steps"
        )
    factor = functools.partial(
        lr_factor, total_steps=max(total_steps, 1), schedule=schedule, **kwargs
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
