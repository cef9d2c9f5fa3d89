"""What the project's Lightning tasks share: LightningCLI setup, run layout, checkpoints, errors.

Every task's CLI (``sebench fit|validate|test``, ``sebench tv-detect ...``) lays out its runs the
same way, ``<default_root_dir>/<dataset>/<experiment>/``: ``checkpoints/`` shared by the
experiment's runs (so ``--ckpt_path last`` finds the previous run's ``last.ckpt``), and one
``version_N/`` per run with the CSV log, TensorBoard events, config.yaml and results.json.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from backbones.errors import InputError, MissingFileError, run_command

from ._nonfinite import NonFiniteLossError

__all__ = [
    "ExperimentCLI",
    "NonFiniteLossError",
    "best_and_latest_checkpoints",
    "default_loggers",
    "run_cli",
]


def _check_accelerator(accelerator: Any) -> None:
    """A run that asks for CUDA on a machine without it stops here, instead of training on the CPU.

    Lightning's ``"auto"`` picks CUDA where there is one and the CPU otherwise, silently; the
    project's configs ask for ``"gpu"`` so that a broken driver or a CPU-only torch cannot turn
    a GPU run into a days-long CPU run.

    Raises:
        InputError: ``accelerator`` is "gpu" or "cuda" and torch finds no CUDA device (nor, for
            "gpu", Apple's MPS); the message names the key to set.
    """
    name = str(accelerator).lower() if isinstance(accelerator, str) else None
    if name not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    if name == "gpu" and torch.backends.mps.is_available():
        return
    raise InputError(
        f"trainer.accelerator is {accelerator!r}, but torch finds no CUDA device on this machine "
        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). To train "
        "on the CPU, set --trainer.accelerator cpu; auto uses CUDA where there is one"
    )


def _check_ckpt_path(ckpt_path: Any) -> None:
    """A checkpoint file named on the command line must exist ("last", "best" and the like are
    Lightning's names, resolved by the Trainer; URLs are read by fsspec)."""
    if not isinstance(ckpt_path, str) or ckpt_path in ("last", "best", "hpc", "registry"):
        return
    if "://" in ckpt_path or ckpt_path.startswith("registry:") or Path(ckpt_path).is_file():
        return
    raise MissingFileError(
        f"--ckpt_path {ckpt_path} does not exist; give a checkpoint file, or 'last' to resume "
        "the experiment's latest state (checkpoints/last.ckpt under the run folder)"
    )


def best_and_latest_checkpoints(
    dirpath: str, *, monitor: str, mode: str, counter: str
) -> list[ModelCheckpoint]:
    """The best checkpoint by ``monitor``, and the latest state with ``last.ckpt`` linking to it.

    A fixed folder, not the run's version_N: a resumed run (a new version) must find the
    previous run's last.ckpt for ``--ckpt_path last``. Two callbacks, because a monitoring
    ModelCheckpoint refreshes last.ckpt only when the score improves.

    Args:
        dirpath: the experiment's checkpoint folder.
        monitor: the logged validation score that ranks the best checkpoint.
        mode: ``"min"`` or ``"max"``: which way ``monitor`` is better.
        counter: ``"epoch"`` or ``"step"``: what numbers the file names.
    """
    number = {"epoch": "{epoch:03d}", "step": "{step:07d}"}[counter]
    best = ModelCheckpoint(
        dirpath=dirpath,
        filename=f"best-{counter}{number}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # Only after a validation: at the end of a training epoch that had none (a run stopped
        # by max_steps inside an epoch), there is no score to rank.
        save_on_train_epoch_end=False,
    )
    # Keeps one file, the latest state (the previous one is removed); last.ckpt links to it (or
    # is a copy where links are not allowed), so each state is written once. At the end of every
    # training epoch, including a partial last one where max_steps stops the run. No version
    # counter: a resumed run that saves the step it resumed from again must overwrite that file
    # and last.ckpt, not leave a last-v1.ckpt linking to a file it then removes.
    latest = ModelCheckpoint(
        dirpath=dirpath,
        filename=f"{counter}{number}",
        auto_insert_metric_name=False,
        save_top_k=1,
        save_on_train_epoch_end=True,
        save_last="link",
        enable_version_counter=False,
    )
    return [best, latest]


def default_loggers(save_dir: str, experiment: str) -> list[Any]:
    """CSV and TensorBoard loggers writing into the same ``<experiment>/version_N`` folder."""
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


class ExperimentCLI(LightningCLI):
    """LightningCLI with the project's run layout, default loggers and default callbacks.

    Unless the config sets its own, it adds CSV and TensorBoard loggers in
    ``<default_root_dir>/<dataset>/<experiment>/version_N``, the task's checkpoint callbacks
    writing into ``<experiment>/checkpoints``, a ``LearningRateMonitor`` and the task's results
    callback. The experiment is the first config file's stem, or :meth:`experiment_without_config`.
    Subclasses give :meth:`dataset_name`, :meth:`checkpoint_callbacks` and
    :meth:`results_callback`.

    Args:
        model_class: the task's LightningModule.
        datamodule_class: its data module class (a base class with ``subclass_mode_data``).
        args (Sequence[str] | None): command-line arguments (None: ``sys.argv[1:]``).
        run (bool): run the subcommand (True).
        **kwargs: further ``LightningCLI`` arguments.
    """

    prog = "sebench"

    def __init__(
        self,
        model_class: type[lightning.LightningModule],
        datamodule_class: type[lightning.LightningDataModule],
        args: Sequence[str] | None = None,
        *,
        run: bool = True,
        **kwargs: Any,
    ) -> None:
        self.experiment = "experiment"
        kwargs.setdefault("parser_kwargs", {"prog": self.prog})
        super().__init__(
            model_class,
            datamodule_class,
            seed_everything_default=0,
            # The modules build SGD and its schedule from scalars; no optimizer/scheduler keys.
            auto_configure_optimizers=False,
            args=list(args) if args is not None else None,
            run=run,
            **kwargs,
        )

    # -- what a task defines -------------------------------------------------------------------

    def dataset_name(self) -> str | None:
        """The folder level between the root and the experiment (None: none)."""
        return getattr(self.datamodule, "dataset_name", None)

    def experiment_without_config(self, config: Any) -> str:
        """The experiment's name when no config file names it."""
        return str(config["model"]["model_name"])

    def checkpoint_callbacks(self, dirpath: str) -> list[ModelCheckpoint]:
        raise NotImplementedError

    def results_callback(self) -> lightning.Callback:
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------------

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (no predict: the modules define no prediction output)."""
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

    def dumped_config(self) -> dict[str, Any]:
        """The resolved config (what config.yaml holds) as nested dicts."""
        config = self._subconfig().clone().as_dict()
        config.pop("__default_config__", None)
        return config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        _check_accelerator(config.get("trainer", {}).get("accelerator"))
        _check_ckpt_path(config.get("ckpt_path"))
        files = config.get("config") or []
        # The first config file names the experiment; later ones are overrides (e.g. a GPU file).
        self.experiment = (
            Path(str(files[0])).stem if files else self.experiment_without_config(config)
        )

    def instantiate_trainer(self, **kwargs: Any) -> lightning.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = trainer_config.get("default_root_dir") or "runs"
        dataset = self.dataset_name()
        save_dir = os.path.join(root, dataset) if dataset else root
        logger = trainer_config.get("logger")
        if logger is None or logger is True:
            logger = kwargs["logger"] = default_loggers(save_dir, self.experiment)
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            dirpath = os.path.join(save_dir, self.experiment, "checkpoints")
            callbacks += self.checkpoint_callbacks(dirpath)
        if logger not in (False, None) and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        results = self.results_callback()
        if not any(isinstance(c, type(results)) for c in callbacks):
            callbacks.append(results)
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def run_cli(cli_class: type[ExperimentCLI], argv: Sequence[str] | None) -> int:
    """Run a task's CLI and turn its errors into exit codes.

    Args:
        cli_class: the task's :class:`ExperimentCLI`.
        argv: arguments after the program name, e.g. ``["fit", "--config", path]`` (None:
            ``sys.argv[1:]``). DDP relaunches the same command line for the other ranks.

    Returns:
        0 on success; 2 for bad input (an ``InputError``, e.g. an unknown model or missing
        data: one clear message, no traceback unless ``SEBENCH_DEBUG=1``); 1 when the loss
        became NaN or inf. Config errors caught by the parser (unknown keys, wrong types) exit
        with status 2. Any other exception propagates with its traceback.
    """
    args = None if argv is None or list(argv) == sys.argv[1:] else list(argv)
    argv = sys.argv[1:] if args is None else args
    command = argv[0] if argv and not argv[0].startswith("-") else ""

    def run() -> None:
        cli_class(args=args)

    return run_command(
        f"{cli_class.prog} {command}".rstrip(),
        run,
        exit_codes={InputError: 2, NonFiniteLossError: 1},
    )
