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

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .data import cifar, places365  # noqa: F401  (so `--data CIFARDataModule` resolves)
from .module import ClassificationModule, NonFiniteLossError
from .results import ResultsCallback

__all__ = ["SEBenchCLI", "main"]


class SEBenchCLI(LightningCLI):
    """LightningCLI for ``ClassificationModule`` and any data module chosen by ``class_path``.

    On top of LightningCLI it adds, unless the config sets its own: CSV and TensorBoard loggers
    in ``<default_root_dir>/<dataset>/<experiment>/version_N``, a ``ModelCheckpoint`` writing
    ``last.ckpt`` every epoch plus the best epoch by ``val/top1_err`` into
    ``<dataset>/<experiment>/checkpoints``, a ``LearningRateMonitor`` and the ``ResultsCallback``.
    The experiment is the first config file's stem, or the model name without one.

    Args:
        args (Sequence[str] | None): command-line arguments (None: ``sys.argv[1:]``).
        run (bool): run the subcommand; False builds trainer, model and data only, from args
            without a subcommand (True).
        **kwargs: further ``LightningCLI`` arguments.
    """

    def __init__(self, args: Sequence[str] | None = None, *, run: bool = True, **kwargs: Any):
        self.experiment = "experiment"
        kwargs.setdefault("parser_kwargs", {"prog": "sebench"})
        super().__init__(
            ClassificationModule,
            lightning.LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            # The module builds SGD and its schedule from scalars; no optimizer/scheduler keys.
            auto_configure_optimizers=False,
            args=list(args) if args is not None else None,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (no predict: the module defines no prediction output)."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with warnings.catch_warnings():
            # Arguments given in Python on purpose: not the mistake LightningCLI warns about.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.set_defaults({"trainer.default_root_dir": "runs"})

    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        files = config.get("config") or []
        # The first config file names the experiment; later ones are overrides (e.g. a GPU file).
        if files:
            self.experiment = Path(str(files[0])).stem
        else:
            self.experiment = str(config["model"]["model_name"])

    def instantiate_trainer(self, **kwargs: Any) -> lightning.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or "runs"
        # The dataset level keeps CIFAR-10 and CIFAR-100 runs of same-named configs apart.
        dataset = getattr(self.datamodule, "dataset_name", None)
        save_dir = os.path.join(root, dataset) if dataset else root
        experiment_dir = os.path.join(save_dir, self.experiment)
        logger = trainer_config.get("logger")
        if logger is None or logger is True:
            logger = kwargs["logger"] = _default_loggers(save_dir, self.experiment)
        callbacks = list(trainer_config.get("callbacks") or [])
        callbacks += self._default_callbacks(trainer_config, callbacks, experiment_dir, logger)
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _default_callbacks(
        self,
        trainer_config: Any,
        callbacks: list[lightning.Callback],
        experiment_dir: str,
        logger: Any,
    ) -> list[lightning.Callback]:
        added: list[lightning.Callback] = []
        has_checkpoint = any(isinstance(c, ModelCheckpoint) for c in callbacks)
        if trainer_config.get("enable_checkpointing", True) is not False and not has_checkpoint:
            added += _checkpoint_callbacks(os.path.join(experiment_dir, "checkpoints"))
        if logger not in (False, None) and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            added.append(LearningRateMonitor(logging_interval="step"))
        if not any(isinstance(c, ResultsCallback) for c in callbacks):
            added.append(ResultsCallback(experiment=self.experiment, config=self._dumped_config()))
        return added

    def _dumped_config(self) -> dict[str, Any]:
        """The resolved config (what config.yaml holds) as nested dicts."""
        config = self._subconfig().clone().as_dict()
        config.pop("__default_config__", None)
        return config


def _checkpoint_callbacks(dirpath: str) -> list[ModelCheckpoint]:
    """The best epoch by ``val/top1_err``, and every epoch's state (``last.ckpt``).

    A fixed folder, not the run's version_N: a resumed run (a new version) must find the
    previous run's last.ckpt for ``--ckpt_path last``. Two callbacks, because a monitoring
    ModelCheckpoint refreshes last.ckpt only in epochs that improve on the best.
    """
    best = ModelCheckpoint(
        dirpath=dirpath,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/top1_err",
        mode="min",
        save_top_k=1,
    )
    # Keeps the latest epoch's checkpoint (the previous one is removed); last.ckpt links to it
    # (or is a copy where links are not allowed), so each epoch is written once.
    latest = ModelCheckpoint(
        dirpath=dirpath,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        save_top_k=1,
        save_last="link",
        every_n_epochs=1,
    )
    return [best, latest]


def _default_loggers(save_dir: str, experiment: str) -> list[Any]:
    csv_logger = CSVLogger(save_dir=save_dir, name=experiment)
    # The same version folder for both: read the CSV logger's next free version once.
    tensorboard = TensorBoardLogger(
        save_dir=save_dir,
        name=experiment,
        version=csv_logger.version,
        sub_dir="tensorboard",
        default_hp_metric=False,
    )
    return [csv_logger, tensorboard]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fit``, ``validate`` or ``test`` (``argv``, e.g. ``["fit", "--config", path]``).

    Args:
        argv (Sequence[str] | None): arguments after the program name (None: ``sys.argv[1:]``).
            DDP relaunches the same command line for the other ranks.

    Returns:
        0 on success; 2 for bad input (a ValueError or FileNotFoundError, e.g. an unknown model
        or missing data: one clear message, no traceback); 1 when the loss became NaN or inf.
        Config errors caught by the parser (unknown keys, wrong types) exit with status 2.
    """
    args = None if argv is None or list(argv) == sys.argv[1:] else list(argv)
    argv = sys.argv[1:] if args is None else args
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    try:
        SEBenchCLI(args=args)
    except NonFiniteLossError as err:
        print(f"sebench {command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"sebench {command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
