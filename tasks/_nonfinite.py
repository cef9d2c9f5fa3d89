"""Stop training on a non-finite loss or gradient, without reading the GPU at every step.

A NaN or inf loss must stop a run before it spoils the weights and the checkpoints on disk, on
every DDP rank at once. Checking ``bool(torch.isfinite(loss))`` and reducing the answer over the
ranks at every step does that, but it makes the host wait for the GPU at every step (a stall in
the GPU-resident CIFAR loop). The guard here keeps the decision on the device instead, the way
``torch.amp.GradScaler`` skips fp16 steps that overflow:

1. each step, the loss and (after DDP's all-reduce) every gradient are checked for NaN/inf on
   the device, into a flag that stays set once set;
2. the flag is the fused optimizer's ``found_inf`` (``torch.optim.SGD(fused=True)``, see
   :func:`sgd`): the optimizer kernel skips the update on the device when it is set, so from the
   first bad step on no update is applied. Gradients are the same on every rank after the
   all-reduce, so every rank skips alike (a rank whose loss alone is not finite skips alone);
3. the host reads the flag every ``check_every`` optimizer steps, before any checkpoint is
   written, and at the end of every training epoch and of training: one read and one collective,
   after which every rank raises :class:`NonFiniteLossError` together, naming the first bad step.

An optimizer that cannot skip on the device gets the flag read after every step instead (the
guarantee holds, at the old cost). Under fp16 with a ``GradScaler`` the scaler checks and skips
non-finite gradients itself (overflow is part of fp16 training); the guard then watches the loss.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import lightning
import torch

from backbones.errors import InputError

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "sgd"]


class NonFiniteLossError(RuntimeError):
    """The training loss or a gradient became NaN or infinite; no update was applied after it."""


def sgd(trainer: lightning.Trainer, params: Iterable[Any], **kwargs: Any) -> torch.optim.SGD:
    """``torch.optim.SGD`` that can skip a step on the device (fused), wherever Lightning allows.

    Lightning refuses gradient clipping with a fused optimizer under fp16's ``GradScaler`` (the
    optimizer unscales inside its step); that one combination gets the plain SGD.

    Args:
        trainer: the trainer the optimizer is for.
        params: parameters or parameter groups.
        **kwargs: SGD's arguments (``lr``, ``momentum``, ...).
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    fused = not (scaler is not None and trainer.gradient_clip_val)
    return torch.optim.SGD(params, fused=fused, **kwargs)


class NonFiniteGuard(lightning.Callback):
    """Raise :class:`NonFiniteLossError` on every rank once a loss or gradient is not finite.

    The project's modules return it from ``configure_callbacks``, so it guards any Trainer that
    trains them. See the module docstring for how it avoids a host sync per step.

    Args:
        advice: what the user should do, appended to the error message.
        check_every: optimizer steps between two reads of the flag on the host (100); the
            updates in between are skipped on the device once the flag is set.
    """

    def __init__(self, advice: str, *, check_every: int = 100) -> None:
        if check_every < 1:
            raise InputError(f"check_every must be at least 1, got {check_every}")
        self.advice = advice
        self.check_every = check_every
        self._flag: torch.Tensor | None = None  # float32 0/1, sticky: the optimizer's found_inf
        self._now = self._one = self._loss = torch.zeros(())
        self._first: dict[str, torch.Tensor] = {}  # loss, epoch, step of the first bad step
        self._step = (0, 0)  # (epoch, global step) of the step being computed
        self._groups: dict[int, list[list[torch.nn.Parameter]]] = {}

    # -- on the device, every step -------------------------------------------------------------

    def record_loss(self, loss: torch.Tensor, *, epoch: int, step: int) -> None:
        """Flag a non-finite ``loss`` of the step at (``epoch``, global ``step``) (no sync)."""
        if self._flag is None or self._flag.device != loss.device:
            self._allocate(loss.device)
        loss = loss.detach().float().reshape(())
        # Several backward passes per step (gradient accumulation): keep a bad one's loss.
        self._loss = torch.where(self._now > 0, self._loss, loss)
        torch.maximum(self._now, (~torch.isfinite(loss)).float(), out=self._now)
        self._step = (epoch, step)

    def flag_step(self, optimizer: torch.optim.Optimizer, *, gradients: bool = True) -> None:
        """Add this step's gradients to its flag (if ``gradients``), remember the first bad step,
        and make the flag sticky; no sync. Call after backward, before ``optimizer.step``."""
        if self._flag is None:
            return  # no loss recorded (e.g. a skipped backward)
        if gradients:
            for grads in self._gradients(optimizer):
                # GradScaler's kernel: sets the flag where a value is not finite (x * 1.0 else).
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self._now, self._one)
        fresh = (self._now > 0) & (self._flag == 0)
        epoch, step = self._step
        for key, value in (("loss", self._loss.double()), ("epoch", epoch), ("step", step)):
            self._first[key].copy_(torch.where(fresh, value, self._first[key]))
        torch.maximum(self._flag, self._now, out=self._flag)
        self._now.zero_()

    def skips_on_device(self, optimizer: torch.optim.Optimizer) -> bool:
        """Hand the flag to ``optimizer`` as its ``found_inf``, if it takes one (fused)."""
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            return False
        optimizer.found_inf = self._flag
        return True

    # -- on the host, every check_every steps ----------------------------------------------------

    def check(self, trainer: lightning.Trainer | None = None) -> None:
        """Read the flag of every rank (one sync, one collective); raise on all if any is set.

        Args:
            trainer: its strategy gathers the flags of the ranks (None: this process only).
        """
        if self._flag is None:
            return
        record = torch.stack(
            [self._flag.double(), self._first["loss"], self._first["epoch"], self._first["step"]]
        )
        if trainer is not None:
            record = trainer.strategy.all_gather(record)
        rows = record.reshape(-1, 4).tolist()
        bad = [(step, epoch, loss, rank) for rank, (flag, loss, epoch, step) in enumerate(rows)
               if flag > 0]  # fmt: skip
        if not bad:
            return
        # The first bad step; there, a rank whose loss is not finite (the cause) before others.
        step, epoch, loss, rank = min(bad, key=lambda b: (b[0], math.isfinite(b[2]), b[3]))
        what = (
            f"training loss is {loss:g} (not finite)"
            if not math.isfinite(loss)
            else f"a gradient is not finite (loss {loss:.4g})"
        )
        where = f" on rank {rank} of {len(rows)}" if len(rows) > 1 else ""
        raise NonFiniteLossError(
            f"{what} at epoch {int(epoch)}, global step {int(step)}{where}; no update was "
            f"applied from that step on and no checkpoint written after it. {self.advice}"
        )

    # -- Lightning hooks -----------------------------------------------------------------------

    def on_before_backward(
        self, trainer: lightning.Trainer, pl_module: Any, loss: torch.Tensor
    ) -> None:
        self.record_loss(loss, epoch=trainer.current_epoch, step=trainer.global_step)

    def on_before_optimizer_step(
        self, trainer: lightning.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer
    ) -> None:
        # Under fp16 the GradScaler checks the gradients and skips the step itself.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.flag_step(optimizer, gradients=scaler is None)
        if scaler is None and not self.skips_on_device(optimizer):
            self.check(trainer)  # this optimizer cannot skip: stop before its step

    def on_train_batch_end(self, trainer: lightning.Trainer, *args: Any) -> None:
        if trainer.global_step % self.check_every == 0:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: lightning.Trainer, *args: Any) -> None:
        self.check(trainer)  # raising here keeps the file from being written

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self.check(trainer)

    # -- helpers -------------------------------------------------------------------------------

    def _allocate(self, device: torch.device) -> None:
        self._flag = torch.zeros((), dtype=torch.float32, device=device)
        self._now = torch.zeros_like(self._flag)
        self._one = torch.ones_like(self._flag)
        self._loss = torch.zeros_like(self._flag)
        self._first = {
            k: torch.zeros((), dtype=torch.float64, device=device)
            for k in ("loss", "epoch", "step")
        }

    def _gradients(self, optimizer: torch.optim.Optimizer) -> list[list[torch.Tensor]]:
        """This step's gradients, one list per (device, dtype): what the kernel accepts."""
        groups = self._groups.get(id(optimizer))
        if groups is None:
            by_kind: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = defaultdict(
                list
            )
            for group in optimizer.param_groups:
                for p in group["params"]:
                    by_kind[(p.device, p.dtype)].append(p)
            groups = self._groups[id(optimizer)] = list(by_kind.values())
        grads = [[p.grad for p in params if p.grad is not None] for params in groups]
        return [g for g in grads if g]
