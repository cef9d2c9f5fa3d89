"""``sebench fit|validate|test --config configs/<dataset>/<experiment>.yaml``, on LightningCLI.

A config has four top-level keys: ``seed_everything``, ``trainer`` (Lightning's Trainer
arguments), ``model`` (``ClassificationModule``'s arguments) and ``data``, which names its data
module class with ``class_path`` and gives its arguments under ``init_args``. Every key is checked
against those signatures, so a misspelt key is an error that names it. ``data.num_classes`` is
linked to ``model.num_classes``.

Layout of a run, ``<default_root_dir>/<dataset>/<experiment>/`` (by default ``runs/``, the data
module's ``dataset_name`` and the config file's stem)::

    checkpoints/last.ckpt -> epochNNN.ckpt      the latest epoch, written every epoch
    checkpoints/best-epochNNN.ckpt              the best epoch by val/top1_err; the folder is
                                                shared by the experiment's runs, so
                                                --ckpt_path last resumes the latest one
    version_N/config.yaml, hparams.yaml         one folder per run (a resumed run gets a new one)
    version_N/metrics.csv                       CSV log
    version_N/results.json                      final errors, speed, setup, the paper's figure
    version_N/tensorboard/                      TensorBoard events
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint

from .._lightning import ExperimentCLI, best_and_latest_checkpoints, run_cli
from .data import cifar, places365  # noqa: F401  (so `--data CIFARDataModule` resolves)
from .module import ClassificationModule
from .results import ResultsCallback

__all__ = ["SEBenchCLI", "main"]


class SEBenchCLI(ExperimentCLI):
    """LightningCLI for ``ClassificationModule`` and any data module chosen by ``class_path``.

    The run layout, loggers and default callbacks are ``ExperimentCLI``'s; this task adds a
    ``ModelCheckpoint`` writing ``last.ckpt`` every epoch plus the best epoch by
    ``val/top1_err``, and the ``ResultsCallback``. The experiment is the first config file's
    stem, or the model name without one.

    Args:
        args (Sequence[str] | None): command-line arguments (None: ``sys.argv[1:]``).
        run (bool): run the subcommand; False builds trainer, model and data only, from args
            without a subcommand (True).
        **kwargs: further ``LightningCLI`` arguments.
    """

    def __init__(self, args: Sequence[str] | None = None, *, run: bool = True, **kwargs: Any):
        super().__init__(
            ClassificationModule,
            lightning.LightningDataModule,
            args,
            subclass_mode_data=True,
            run=run,
            **kwargs,
        )

    def checkpoint_callbacks(self, dirpath: str) -> list[ModelCheckpoint]:
        return best_and_latest_checkpoints(
            dirpath, monitor="val/top1_err", mode="min", counter="epoch"
        )

    def results_callback(self) -> ResultsCallback:
        return ResultsCallback(experiment=self.experiment, config=self.dumped_config())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fit``, ``validate`` or ``test`` (``argv``, e.g. ``["fit", "--config", path]``).

    Args:
        argv (Sequence[str] | None): arguments after the program name (None: ``sys.argv[1:]``).
            DDP relaunches the same command line for the other ranks.

    Returns:
        0 on success; 2 for bad input (an ``InputError``, e.g. an unknown model or missing
        data: one clear message, no traceback unless ``SEBENCH_DEBUG=1``); 1 when the loss
        became NaN or inf. Config errors caught by the parser (unknown keys, wrong types) exit
        with status 2. Any other exception propagates with its traceback.
    """
    return run_cli(SEBenchCLI, argv)


if __name__ == "__main__":
    sys.exit(main())
