"""Trained registry models and evaluation data for the analysis commands.

A model comes from a checkpoint of a classification run (a Lightning ``.ckpt`` whose
``hyper_parameters`` hold ``model_name`` / ``model_kwargs`` / ``num_classes`` and whose
``state_dict`` keys start with ``model.``) or from a plain ``state_dict`` of a registry model.
A state dict saved by ``sebench prune-se --save`` lacks the pruned SE blocks: they are found from
the missing keys and pruned again before loading.

Data comes from any classification data module of the project, built from the ``data:`` section
(``class_path`` + ``init_args``) of a LightningCLI config, or from the CIFAR shortcuts. Its
validation split (with the evaluation transform) is what the commands read.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from argparse import ArgumentError
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lightning
import numpy as np
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import backbones
from backbones.errors import InputError, MissingFileError
from backbones.prune import prune_se, se_sites
from backbones.weights.checkpoint import read_checkpoint

__all__ = [
    "CIFAR10_CLASSES",
    "LoadedModel",
    "build_data_module",
    "class_names",
    "dataset_targets",
    "eval_dataset",
    "load_classifier",
    "make_loader",
    "progress",
    "resolve_classes",
    "resolve_device",
    "sample_per_class",
]

# torchvision's CIFAR-10 label order; the synthetic stand-in has no names of its own.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
T = TypeVar("T")


@dataclasses.dataclass
class LoadedModel:
    """A registry model with its weights and where they came from.

    Attributes:
        model: the model, in eval mode on the CPU.
        model_name: its registry name.
        model_kwargs: the extra ``create_model`` keywords it was built with.
        num_classes: classifier outputs.
        checkpoint: the file the weights came from.
        pruned: SE blocks absent from the checkpoint and pruned at load time.
    """

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    checkpoint: str
    pruned: list[str]


def _absent_se_blocks(model: nn.Module, missing: Iterable[str]) -> list[str]:
    """SE blocks whose every parameter is missing from a state dict (a pruned checkpoint)."""
    missing = set(missing)
    absent = []
    for site in se_sites(model):
        keys = {f"{site.path}.{k}" for k in model.get_submodule(site.path).state_dict()}
        if keys and keys <= missing:
            absent.append(site.name)
    return absent


def load_classifier(
    checkpoint: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    fallback_num_classes: int | None = None,
) -> LoadedModel:
    """Build the registry model of a checkpoint and load its weights (strictly).

    Args:
        checkpoint: a Lightning ``.ckpt`` of a classification run, or a plain ``state_dict``.
        model_name: registry name; required for a plain state dict, checked against a Lightning
            checkpoint's (None: from the checkpoint).
        model_kwargs: extra ``create_model`` keywords (None: the checkpoint's, or none).
        num_classes: classifier outputs (None: the checkpoint's, else the rows of ``fc.weight``).
        fallback_num_classes: classifier outputs when neither of those tells (the data's).

    Raises:
        ValueError: missing or unreadable file, unknown model, or weights that do not fit.
    """
    path = Path(checkpoint)
    read = read_checkpoint(path, model_name=model_name, model_kwargs=model_kwargs)
    if read.model_name is None:
        raise InputError(
            f"{path} is a plain state_dict: pass --model NAME (and --model-kwargs if it was "
            "built with any)"
        )
    state, name, kwargs, ckpt_classes = (
        read.state_dict, read.model_name, read.model_kwargs, read.num_classes
    )
    classes = next((n for n in (num_classes, ckpt_classes, fallback_num_classes) if n), None)
    if classes is None:
        raise InputError(f"{path}: cannot tell the number of classes; pass --num-classes")
    model = backbones.create_model(name, num_classes=classes, **kwargs)
    missing = set(model.state_dict()) - set(state)
    pruned = _absent_se_blocks(model, missing) if missing else []
    if pruned:
        prune_se(model, pruned)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{path}: the weights do not fit {name} (num_classes={classes}, "
            f"model_kwargs={kwargs}): {err}"
        ) from err
    model.eval()
    return LoadedModel(model, name, kwargs, classes, str(path), pruned)


def _data_section(config_file: Path) -> dict[str, Any]:
    if not config_file.is_file():
        raise MissingFileError(f"data config {config_file} does not exist")
    try:
        config = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{config_file} is not valid YAML: {err}") from err
    section = config.get("data", config) if isinstance(config, dict) else None
    if not isinstance(section, dict) or "class_path" not in section:
        raise InputError(
            f"{config_file}: expected a 'data:' section with class_path and init_args (as in "
            "configs/cifar10/*.yaml or a run's config.yaml), or that section alone"
        )
    return section


def _data_parser() -> LightningArgumentParser:
    """The ``data`` part of ``sebench fit``'s LightningCLI parser: any LightningDataModule by
    ``class_path`` and ``init_args``, the project's also by their short names."""
    import tasks.classification  # noqa: F401  (the project's data modules, by short name)

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(lightning.LightningDataModule, "data", subclass_mode=True)
    return parser


def build_data_module(
    *,
    data_config: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    synthetic: bool = False,
    overrides: dict[str, Any] | None = None,
) -> lightning.LightningDataModule:
    """The data module of a config's ``data:`` section, or a CIFAR one from the shortcuts.

    The section is checked and built by the LightningCLI parser ``sebench fit`` uses, so a key
    or value it would reject is rejected here with the same message.

    Args:
        data_config: YAML file with a ``data:`` section (``class_path`` + ``init_args``) or that
            section alone.
        dataset: ``"cifar10"`` or ``"cifar100"`` without a config.
        data_dir: the data folder (overrides the config's ``data_dir``; default "data").
        synthetic: CIFAR's generated stand-in instead of the files.
        overrides: further ``init_args`` (e.g. ``batch_size``), applied where the class has them.

    Raises:
        InputError: neither or both sources given, a bad config, or an unknown argument.
    """
    if (data_config is None) == (dataset is None):
        raise InputError("give the data either as --data-config FILE.yaml or as --dataset NAME")
    if data_config is not None:
        section = _data_section(Path(data_config))
    else:
        section = {"class_path": "CIFARDataModule", "init_args": {"dataset": dataset}}
    parser = _data_parser()
    try:
        config = parser.parse_object({"data": section})
    except ArgumentError as err:  # the parser's only error: this input does not fit
        raise InputError(f"{data_config or dataset}: {err}") from None
    init_args = config.data.init_args
    requested = {k: v for k, v in (overrides or {}).items() if v is not None}
    if data_dir is not None:
        requested["data_dir"] = data_dir
    if synthetic:
        requested["synthetic"] = True
    unknown = sorted(set(requested) - set(vars(init_args)))
    if unknown:
        raise InputError(
            f"{config.data.class_path} has no argument(s) {unknown}; its arguments: "
            f"{', '.join(vars(init_args))}"
        )
    # The commands sample classes from a Dataset (not the GPU-resident loader) and pin memory
    # themselves when the device is CUDA.
    requested.update({k: False for k in ("gpu_resident", "pin_memory") if k in init_args})
    if getattr(init_args, "decode", None) == "gpu":  # a GPU-decoding module's items are bytes
        requested["decode"] = "cpu"
    for key, value in requested.items():
        init_args[key] = value
    return parser.instantiate_classes(config).data


def eval_dataset(data: lightning.LightningDataModule) -> Dataset:
    """The validation split of a data module (evaluation transform), after prepare and setup."""
    data.prepare_data()
    data.setup("validate")
    dataset = getattr(data.val_dataloader(), "dataset", None)
    if dataset is None:
        raise InputError(f"{type(data).__name__}.val_dataloader() has no dataset to sample from")
    return dataset


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """Labels of every item, from ``targets`` / ``labels`` when the dataset keeps them.

    Datasets without either are read item by item (slow: every image is decoded).
    """
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64)
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices)]
    print("reading every label item by item (the dataset keeps no targets list)", file=sys.stderr)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def class_names(dataset: Dataset, data: lightning.LightningDataModule, num_classes: int) -> list[str]:
    """Class names in label order: the dataset's ``classes``, CIFAR-10's for its synthetic
    stand-in, else the label indices as text."""
    names = getattr(dataset, "classes", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    if getattr(data, "dataset_name", None) == "cifar10" and num_classes == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return [str(i) for i in range(num_classes)]


def _short(name: str) -> str:
    # Places365 names read "/a/airfield" or "/a/arena/hockey": the part after "/<letter>/".
    parts = name.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and len(parts[0]) == 1 else name


def resolve_classes(requested: Sequence[str], names: Sequence[str]) -> list[int]:
    """Label indices of classes given by name (case-insensitive; Places365 without "/a/") or
    by index.

    Raises:
        ValueError: an unknown name or an index out of range (lists the valid names).
    """
    lookup: dict[str, int] = {}
    for index, name in enumerate(names):
        lookup.setdefault(name.lower(), index)
        lookup.setdefault(_short(name).lower(), index)
    chosen: list[int] = []
    for item in requested:
        key = str(item).strip()
        if key.lower() in lookup:
            index = lookup[key.lower()]
        elif key.isdigit() and int(key) < len(names):
            index = int(key)
        else:
            close = difflib.get_close_matches(key.lower(), list(lookup), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            shown = ", ".join(names[:100]) + (f", ... ({len(names)} in all)" if len(names) > 100 else "")
            raise InputError(
                f"unknown class {key!r}.{hint} Give names or indices 0..{len(names) - 1}; the "
                f"classes: {shown}"
            )
        if index not in chosen:
            chosen.append(index)
    return chosen


def sample_per_class(
    targets: np.ndarray, classes: Iterable[int], per_class: int, *, seed: int = 0
) -> np.ndarray:
    """Up to ``per_class`` random item indices of each class (sorted, reproducible by seed)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in classes:
        items = np.flatnonzero(targets == label)
        if len(items) > per_class:
            items = rng.choice(items, per_class, replace=False)
        picked.append(items)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; None picks CUDA when there is one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"--device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    return device


def make_loader(
    dataset: Dataset,
    indices: np.ndarray | None,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """An unshuffled loader over ``dataset`` (or the ``indices`` of it)."""
    chosen = dataset if indices is None else Subset(dataset, indices.tolist())
    return DataLoader(
        chosen,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


def progress(iterable: Iterable[T], *, total: int, desc: str) -> Iterator[T]:
    """``iterable`` with a progress bar (tqdm when installed, else a line every 10%)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        step = max(1, total // 10)
        for i, item in enumerate(iterable, 1):
            yield item
            if i % step == 0 or i == total:
                print(f"{desc}: {i}/{total} batches", file=sys.stderr, flush=True)
        return
    yield from tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr)
