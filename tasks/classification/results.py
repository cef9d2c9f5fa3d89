"""The results file of a classification run: final errors, speed, setup and the paper's figure.

``ResultsCallback`` writes ``<trainer.log_dir>/results.json`` at the end of ``fit`` (from the last
validation) and of ``test``. The paper's figures are those of Hu et al., "Squeeze-and-Excitation
Networks" (arXiv:1709.01507), Tables 4 (CIFAR-10), 5 (CIFAR-100) and 6 (Places365-Challenge).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import lightning
import torch

__all__ = ["PAPER_RESULTS", "ResultsCallback", "paper_result", "markdown_line"]

_T4 = "Hu et al. 2019 (arXiv:1709.01507), Table 4, CIFAR-10"
_T5 = "Hu et al. 2019 (arXiv:1709.01507), Table 5, CIFAR-100"
_T6 = "Hu et al. 2019 (arXiv:1709.01507), Table 6, Places365-Challenge val, single crop"

# (dataset, model_name) -> (top-1 error %, top-5 error % or None, source)
PAPER_RESULTS: dict[tuple[str, str], tuple[float, float | None, str]] = {
    ("cifar10", "preact_resnet110"): (6.37, None, _T4),
    ("cifar10", "se_preact_resnet110"): (5.21, None, _T4),
    ("cifar10", "preact_resnet164"): (5.46, None, _T4),
    ("cifar10", "se_preact_resnet164"): (4.39, None, _T4),
    ("cifar10", "wrn16_8"): (4.27, None, _T4),
    ("cifar10", "se_wrn16_8"): (3.88, None, _T4),
    ("cifar10", "shake_shake26_2x96d"): (2.56, None, _T4),
    ("cifar10", "se_shake_shake26_2x96d"): (2.12, None, _T4),
    ("cifar100", "preact_resnet110"): (26.88, None, _T5),
    ("cifar100", "se_preact_resnet110"): (23.85, None, _T5),
    ("cifar100", "preact_resnet164"): (24.33, None, _T5),
    ("cifar100", "se_preact_resnet164"): (21.31, None, _T5),
    ("cifar100", "wrn16_8"): (20.43, None, _T5),
    ("cifar100", "se_wrn16_8"): (19.14, None, _T5),
    ("cifar100", "shake_even29_2x4x64d"): (15.85, None, _T5),
    ("cifar100", "se_shake_even29_2x4x64d"): (15.41, None, _T5),
    ("places365", "resnet152"): (41.15, 11.61, _T6),
    ("places365", "se_resnet152"): (40.37, 11.01, _T6),
}


def paper_result(dataset: str, model_name: str) -> dict[str, Any] | None:
    """The paper's error for a model on a dataset, or None where the paper has no figure.

    Args:
        dataset (str): a data module's ``dataset_name``, e.g. "cifar10".
        model_name (str): a registry name, e.g. "se_preact_resnet110".

    Returns:
        ``{"top1_err", "top5_err", "source"}`` (errors in %, top-5 None where not reported).
    """
    entry = PAPER_RESULTS.get((dataset, model_name))
    if entry is None:
        return None
    top1, top5, source = entry
    return {"top1_err": top1, "top5_err": top5, "source": source}


def _fmt(top1: float | None, top5: float | None, with_top5: bool) -> str:
    text = "n/a" if top1 is None else f"{top1:.2f}"
    if with_top5:
        text += " / " + ("n/a" if top5 is None else f"{top5:.2f}")
    return text


def markdown_line(results: dict[str, Any]) -> str:
    """One markdown table row: model, dataset, error (top-1, or top-1 / top-5), paper, data.

    Top-5 is shown where the paper reports it (Places365). The last column says whether the data
    was real or synthetic, so a synthetic number is never mistaken for a result.

    Args:
        results (dict[str, Any]): a results dict with the keys of ``results.json``.

    Returns:
        e.g. ``| se_preact_resnet110 | cifar10 | 5.40 | 5.21 (paper) | real data |``.
    """
    paper = results.get("paper")
    with_top5 = paper is not None and paper["top5_err"] is not None
    ours = _fmt(results["top1_err"], results["top5_err"], with_top5)
    theirs = "n/a" if paper is None else _fmt(paper["top1_err"], paper["top5_err"], with_top5)
    theirs += " (paper)" if paper is not None else ""
    data = "synthetic data" if results["synthetic"] else "real data"
    if results.get("model_kwargs"):
        data += f", model_kwargs {json.dumps(results['model_kwargs'], sort_keys=True)}"
    return f"| {results['model_name']} | {results['dataset']} | {ours} | {theirs} | {data} |"


def _jsonable(value: Any) -> Any:
    """A JSON round trip of ``value``; objects JSON cannot hold become their ``str``."""
    return json.loads(json.dumps(value, default=str))


class ResultsCallback(lightning.Callback):
    """Writes ``<trainer.log_dir>/results.json`` at the end of fit and of test (global rank 0).

    Images per second count training batches only, summed over processes: the clock runs from
    each training epoch's start to its end and stops while validation runs inside the epoch. A
    test run reports the speed of the fit before it in the same process, or 0.0.

    Args:
        experiment (str | None): name of the experiment, e.g. the config file's stem (None: the
            model name).
        config (dict[str, Any] | None): the resolved run configuration to store (None: the
            module's and the data module's hyperparameters).
        filename (str): file written in ``trainer.log_dir`` ("results.json").
    """

    def __init__(
        self,
        experiment: str | None = None,
        config: dict[str, Any] | None = None,
        *,
        filename: str = "results.json",
    ) -> None:
        self.experiment = experiment
        self.config = config
        self.filename = filename
        self.path: str | None = None  # where the last results were written (rank 0)
        self._start = 0.0
        self._train_time = 0.0
        self._train_images = 0
        self._clock: float | None = None  # set while training batches are being timed
        self._images_per_s = 0.0  # of the last fit in this process; 0.0 where none ran

    def _now(self, pl_module: lightning.LightningModule) -> float:
        # Kernels run asynchronously on a GPU: wait for them before reading the clock.
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _stop_clock(self, pl_module: lightning.LightningModule) -> None:
        if self._clock is not None:
            self._train_time += self._now(pl_module) - self._clock
            self._clock = None

    def on_fit_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._start = time.perf_counter()
        self._train_time, self._train_images, self._clock = 0.0, 0, None

    def on_train_epoch_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._clock = self._now(pl_module)

    def on_train_batch_end(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._train_images += len(batch[1])

    def on_validation_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._stop_clock(pl_module)

    def on_validation_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        # Validation inside a training epoch: restart the clock for the rest of the epoch. (Not
        # `trainer.training`: Lightning sets it back only after this hook.)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._clock = self._now(pl_module)

    def on_train_epoch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._stop_clock(pl_module)

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        images = trainer.strategy.reduce(
            torch.tensor(float(self._train_images), device=pl_module.device), reduce_op="sum"
        )
        self._images_per_s = float(images) / self._train_time if self._train_time > 0 else 0.0
        self._write(trainer, pl_module, "fit", "val", trainer.current_epoch, self._images_per_s)

    def on_test_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._start = time.perf_counter()

    def on_test_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        # A test run on its own restores only the weights; the module keeps the epoch count.
        epochs = getattr(pl_module, "epochs_trained", trainer.current_epoch)
        self._write(trainer, pl_module, "test", "test", epochs, self._images_per_s)

    def _write(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        stage: str,
        prefix: str,
        epochs: int,
        images_per_s: float,
    ) -> None:
        log_dir = trainer.log_dir  # a collective call: every rank must make it
        if not trainer.is_global_zero or log_dir is None:
            return
        results = self.collect(trainer, pl_module, stage, prefix, epochs, images_per_s)
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, self.filename)
        with open(self.path, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")

    def collect(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        stage: str,
        prefix: str,
        epochs: int,
        images_per_s: float,
    ) -> dict[str, Any]:
        """The results dict of the run so far (the content of ``results.json``)."""
        metrics = trainer.callback_metrics
        hparams = dict(pl_module.hparams)
        datamodule = getattr(trainer, "datamodule", None)
        model_name = str(hparams.get("model_name", type(pl_module).__name__))
        dataset = str(getattr(datamodule, "dataset_name", "unknown"))

        def metric(name: str) -> float | None:
            value = metrics.get(f"{prefix}/{name}")
            return None if value is None else round(float(value), 4)

        config = self.config
        if config is None:
            config = {"model": hparams, "data": dict(getattr(datamodule, "hparams", {}))}
        results = {
            "experiment": self.experiment or model_name,
            "stage": stage,
            "model_name": model_name,
            "model_kwargs": _jsonable(hparams.get("model_kwargs") or {}),
            "dataset": dataset,
            "synthetic": bool(getattr(datamodule, "synthetic", False)),
            "top1_err": metric("top1_err"),
            "top5_err": metric("top5_err"),
            "epochs": int(epochs),
            "wall_time_s": round(time.perf_counter() - self._start, 3),
            "images_per_s": round(images_per_s, 2),
            "precision": str(trainer.precision),
            "world_size": int(trainer.world_size),
            "config": _jsonable(config),
            "paper": paper_result(dataset, model_name),
        }
        results["markdown"] = markdown_line(results)
        return results
