"""Image classification with any registry backbone, as a LightningModule.

The recipes of Hu et al., "Squeeze-and-Excitation Networks" (arXiv:1709.01507), Sec. 5.1 and 6:
SGD with momentum (optionally Nesterov), weight decay (optionally not on BN weights and biases),
cross-entropy with optional label smoothing, and a learning-rate schedule stepped after every
optimizer step. Milestones are fractions of the whole run, so a config stays valid when its
epoch count changes: He et al.'s 32k/48k of 64k iterations is ``[0.5, 0.75]``, Zagoruyko and
Komodakis's epochs 60/120/160 of 200 are ``[0.3, 0.6, 0.8]``.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Literal, Sequence

import lightning
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

import backbones
from backbones.errors import InputError

from .._nonfinite import NonFiniteGuard, NonFiniteLossError, sgd
from ..schedules import check_schedule, step_scheduler

__all__ = ["ClassificationModule", "NonFiniteLossError"]


class ClassificationModule(lightning.LightningModule):
    """A registry backbone trained with SGD and cross-entropy; reports top-1/top-5 error in %.

    Args:
        model_name (str): a registry name, e.g. "se_preact_resnet110" ("se_preact_resnet110").
        model_kwargs (dict[str, Any] | None): extra ``backbones.create_model`` keywords, e.g.
            the SE knobs ``{"se_reduction": 8}`` (None: none).
        num_classes (int): classifier outputs; the CLI links it from the data module (10).
        lr (float): base learning rate (0.1).
        momentum (float): SGD momentum (0.9).
        nesterov (bool): Nesterov momentum (False).
        weight_decay (float): L2 weight decay (1e-4).
        no_decay_bn_bias (bool): no weight decay on 1-D parameters, i.e. norm weights and
            biases (False).
        label_smoothing (float): cross-entropy label smoothing (0.0).
        schedule (str): "multistep", "step", "cosine" or "constant" ("multistep").
        milestones (Sequence[float]): "multistep": fractions of the total optimizer steps where
            the rate is multiplied by ``gamma`` ((0.5, 0.75): He et al.'s 32k and 48k of 64k).
        gamma (float): decay factor of "multistep" and "step" (0.1).
        step_every (float | None): "step": decay every this fraction of the run, e.g. 0.3 for
            every 30 of 100 epochs (None; required by "step").
        warmup_steps (int): optimizer steps of warm-up (0: none; He et al.'s ResNet-110: ~400).
        warmup_lr (float | None): learning rate during (constant) or at the start of (linear)
            warm-up (None: ``lr / 10``, He et al.'s 0.01 for 0.1).
        warmup (str): "constant" or "linear" ("constant").
        channels_last (bool): run the backbone in channels-last memory format (False).
        compile (bool): ``torch.compile`` the backbone in place; checkpoints keep plain
            parameter names (False).

    A NaN or infinite loss or gradient stops training with ``NonFiniteLossError`` on every
    rank; no update is applied from that step on and no checkpoint written after it. The flag
    is read on the host every ``nonfinite_check_every`` optimizer steps (100), not every step.
    """

    nonfinite_check_every = 100

    def __init__(
        self,
        model_name: str = "se_preact_resnet110",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        *,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        no_decay_bn_bias: bool = False,
        label_smoothing: float = 0.0,
        schedule: Literal["multistep", "step", "cosine", "constant"] = "multistep",
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        step_every: float | None = None,
        warmup_steps: int = 0,
        warmup_lr: float | None = None,
        warmup: Literal["constant", "linear"] = "constant",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_schedule(schedule, milestones, step_every, warmup, warmup_steps)
        # Plain lists and dicts (not tuples): save_hyperparameters reads these locals, and
        # hparams.yaml must load with yaml.safe_load.
        model_kwargs = dict(model_kwargs or {})
        milestones = [float(m) for m in milestones]
        if "num_classes" in model_kwargs:
            raise InputError(
                "model_kwargs must not contain 'num_classes': it comes from the num_classes "
                "argument (linked from the data module by the CLI)"
            )
        self.save_hyperparameters()
        self.model = backbones.create_model(model_name, num_classes=num_classes, **model_kwargs)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            # In place: the state dict keeps its names, so checkpoints load with or without it.
            self.model.compile()
        top5 = min(5, num_classes)
        # validate_args=False: the check reads the labels back to the host (a GPU sync) at
        # every step; the data modules check the label range once, when they load the data.
        accuracy = functools.partial(
            MulticlassAccuracy, num_classes, average="micro", validate_args=False
        )
        self.metrics = nn.ModuleDict(
            {
                "train_top1": accuracy(top_k=1),
                "val_top1": accuracy(top_k=1),
                "val_top5": accuracy(top_k=top5),
                "test_top1": accuracy(top_k=1),
                "test_top5": accuracy(top_k=top5),
            }
        )
        # Epochs behind the current weights; stored in checkpoints for the results of `test`.
        self.epochs_trained = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The GPU-resident CIFAR path hands over channels-last batches: one conversion here (none
        # when the batch is already in the model's format).
        layout = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
        return self.model(x.contiguous(memory_format=layout))

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        # Float32 under bf16/fp16 autocast, for the loss and the metrics alike: the log-softmax
        # of low-precision logits is coarse, and their argmax can tie.
        return self(images).float()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        images, target = batch
        logits = self._logits(images)
        loss = self._loss(logits, target)
        self.metrics["train_top1"].update(logits.detach(), target)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def configure_callbacks(self) -> list[lightning.Callback]:
        # Stops on a NaN/inf loss or gradient without a host sync per step (tasks/_nonfinite.py).
        advice = (
            "The last good checkpoint (last.ckpt) is kept: lower the learning rate or add "
            "warm-up, then resume with --ckpt_path last"
        )
        return [NonFiniteGuard(advice, check_every=self.nonfinite_check_every)]

    def on_train_epoch_start(self) -> None:
        # Checkpoints are written at the end of the epoch, before the trainer counts it as done.
        self.epochs_trained = self.current_epoch + 1

    def on_train_epoch_end(self) -> None:
        self._log_errors("train", top5=False)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        images, target = batch
        logits = self._logits(images)
        loss = self._loss(logits, target)
        self.metrics[f"{prefix}_top1"].update(logits, target)
        self.metrics[f"{prefix}_top5"].update(logits, target)
        self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val", top5=True)

    def on_test_epoch_end(self) -> None:
        self._log_errors("test", top5=True)

    def _log_errors(self, prefix: str, *, top5: bool) -> None:
        # compute() gathers the counts of every process, so each rank logs the global error.
        keys = ["top1", "top5"] if top5 else ["top1"]
        for key in keys:
            metric = self.metrics[f"{prefix}_{key}"]
            error = 100.0 * (1.0 - metric.compute())
            metric.reset()
            self.log(f"{prefix}/{key}_err", error, prog_bar=key == "top1", sync_dist=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = sgd(
            self.trainer,
            self._param_groups(),
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov,
            weight_decay=hp.weight_decay,
        )
        warmup_lr = hp.lr / 10 if hp.warmup_lr is None else hp.warmup_lr
        scheduler = step_scheduler(
            self.trainer,
            optimizer,
            schedule=hp.schedule,
            milestones=tuple(hp.milestones),
            gamma=hp.gamma,
            step_every=hp.step_every,
            warmup_steps=hp.warmup_steps,
            warmup_factor=warmup_lr / hp.lr,
            warmup=hp.warmup,
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _param_groups(self) -> list[dict[str, Any]]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.hparams.no_decay_bn_bias:
            return [{"params": params}]
        # 1-D tensors are norm scales/shifts and biases (He et al. 2019, "Bag of Tricks").
        return [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["epochs_trained"] = self.epochs_trained
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epochs_trained = int(checkpoint.get("epochs_trained", checkpoint.get("epoch", 0)))
        # Resuming a fit: continue the random streams where the checkpoint left them, so the
        # next epoch's shuffling, augmentation and Shake-Shake coefficients are those of an
        # uninterrupted run. Only when fitting: loading weights must not reseed the caller.
        states = checkpoint.get("rng_states")
        if states is not None and self._trainer is not None and self._trainer.state.fn == "fit":
            _set_rng_states(states)


def _rng_states() -> dict[str, Any]:
    """The global random states, in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # This process's own device only. Under DDP every rank seeds alike and draws alike, so
        # rank 0's stream (the one saved) is each rank's on its own device; a list of every
        # device's state, as rank 0 sees them, would give the other ranks their unused streams.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if isinstance(states["cuda"], torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuple(states["python"]))


def _as_tuple(state: Any) -> Any:
    # A checkpoint may turn random.getstate()'s nested tuples into lists.
    return tuple(_as_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
