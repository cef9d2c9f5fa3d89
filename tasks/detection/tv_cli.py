"""``sebench tv-detect fit|validate|test --config configs/coco/tv_<trunk>.yaml``, on LightningCLI.

torchvision's Faster R-CNN, Mask R-CNN, RetinaNet or FCOS (``model.detector``) with FPN on a
registry trunk (``DetectionModule``) and COCO-format data (``COCODetectionDataModule``). A
config has ``seed_everything``, ``trainer`` (Lightning's Trainer arguments: ``precision:
bf16-mixed``, ``devices: 8``, ``strategy: ddp`` ...), ``model`` and ``data``; every key is
checked against those signatures. ``data.num_classes`` (the categories of the annotation file)
is linked to ``model.num_classes``, and ``model.detector`` to ``data.masks`` (instance masks
are loaded for Mask R-CNN only).

Layout of a run, ``<default_root_dir>/coco/<experiment>/`` (by default ``runs/`` and the config
file's stem)::

    checkpoints/last.ckpt -> stepNNNNNNN.ckpt   the latest validation's state
    checkpoints/best-stepNNNNNNN.ckpt           the best by val/AP; the folder is shared by the
                                                experiment's runs: --ckpt_path last resumes
    version_N/config.yaml, hparams.yaml         one folder per run
    version_N/metrics.csv, tensorboard/         logs
    version_N/results.json                      the last box (and mask) AP; Faster R-CNN's
                                                beside the paper's (Table 7)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from tasks._lightning import ExperimentCLI, best_and_latest_checkpoints, run_cli

from .lightning import COCODetectionDataModule, DetectionModule
from .paper import PAPER_TABLE7, paper_line

__all__ = ["DetectionResultsCallback", "TVDetectionCLI", "main"]

PROG = "sebench tv-detect"


class DetectionResultsCallback(lightning.Callback):
    """Write ``<log_dir>/results.json`` after fit, validate and test (rank 0 only).

    It holds the model name, the detector, the stage, the last AP dict (and mask AP dict) and
    image count, the run's config and, for Faster R-CNN, the paper's Table 7 figure with a
    markdown line comparing both.

    Args:
        experiment (str): the experiment name (config stem).
        config (dict[str, Any] | None): the resolved config to store (None: none).
    """

    def __init__(self, experiment: str, config: dict[str, Any] | None = None) -> None:
        self.experiment = experiment
        self.config = config or {}

    def _write(self, trainer: lightning.Trainer, module: DetectionModule, stage: str) -> None:
        if not trainer.is_global_zero or not module.last_ap:
            return
        name, detector = module.hparams.model_name, module.hparams.detector
        table7 = detector == "faster_rcnn"  # the paper's COCO figures are Faster R-CNN's
        results = {
            "experiment": self.experiment,
            "model_name": name,
            "detector": detector,
            "stage": stage,
            "box_ap": _rounded(module.last_ap),
            **({"segm_ap": _rounded(module.last_segm_ap)} if module.last_segm_ap else {}),
            "num_images": module.last_num_images,
            "trained_steps": module.trained_steps,
            "evaluated_at_step": module.last_ap_step,
            "paper": PAPER_TABLE7.get(name) if table7 else None,
            "paper_line": paper_line(name, module.last_ap) if table7 else None,
            "config": self.config,
        }
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))

    def on_fit_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def on_test_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self._write(trainer, pl_module, "test")


def _rounded(ap: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 3)) for k, v in ap.items()}


class TVDetectionCLI(ExperimentCLI):
    """LightningCLI for ``DetectionModule`` and ``COCODetectionDataModule``.

    The run layout, loggers and default callbacks are ``ExperimentCLI``'s; this task adds
    checkpoints (the best by ``val/AP`` and the latest, as ``last.ckpt``) and the
    ``DetectionResultsCallback``.

    Args:
        args (Sequence[str] | None): command-line arguments (None: ``sys.argv[1:]``).
        run (bool): run the subcommand (True).
        **kwargs: further ``LightningCLI`` arguments.
    """

    prog = PROG

    def __init__(self, args: Sequence[str] | None = None, *, run: bool = True, **kwargs: Any):
        super().__init__(DetectionModule, COCODetectionDataModule, args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.detector", "data.masks", compute_fn=_needs_masks)

    def experiment_without_config(self, config: Any) -> str:
        model, detector = config["model"]["model_name"], config["model"]["detector"]
        return f"tv_{model}" if detector == "faster_rcnn" else f"tv_{detector}_{model}"

    def checkpoint_callbacks(self, dirpath: str) -> list[ModelCheckpoint]:
        return best_and_latest_checkpoints(dirpath, monitor="val/AP", mode="max", counter="step")

    def results_callback(self) -> DetectionResultsCallback:
        return DetectionResultsCallback(self.experiment, self.dumped_config())

    def after_fit(self) -> None:
        """Evaluate the final weights when training stopped between two validations.

        ``max_steps`` usually ends a run inside an epoch that has no validation; the final AP
        (and results.json) must describe the weights the run ends with.
        """
        trainer, module = self.trainer, self.model
        if trainer.interrupted or trainer.limit_val_batches == 0:
            return
        if module.last_ap_step != module.trained_steps:
            trainer.validate(module, datamodule=self.datamodule, verbose=False)


def _needs_masks(detector: str) -> bool:
    return detector == "mask_rcnn"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fit``, ``validate`` or ``test`` (``argv``, e.g. ``["fit", "--config", path]``).

    Args:
        argv (Sequence[str] | None): arguments after ``sebench tv-detect`` (None:
            ``sys.argv[1:]``).

    Returns:
        0 on success; 2 for bad input (unknown model, missing or malformed COCO files: one line,
        no traceback; parser errors exit with 2 as well); 1 when the loss became NaN or inf.
    """
    return run_cli(TVDetectionCLI, argv)

if __name__ == "__main__":
    sys.exit(main())
