"""COCO data sets for detectron2 training: the builtin COCO 2017 splits and any COCO-format file.

Two ways to name the data:

- detectron2's builtin names (``coco_2017_train``, ``coco_2017_val``, ...), read from
  ``$DETECTRON2_DATASETS/coco/annotations/instances_{train,val}2017.json`` and
  ``$DETECTRON2_DATASETS/coco/{train,val}2017/`` (``DETECTRON2_DATASETS`` defaults to
  ``./datasets``);
- a COCO instances JSON and its image folder given by path, registered here under
  ``CUSTOM_TRAIN_NAME`` / ``CUSTOM_VAL_NAME``.

Every data set a run uses is checked with ``check_coco`` before training starts, so a missing
file or a malformed annotation fails at once with the file and annotation id in the message,
not hours later inside a data loader worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from backbones.errors import InputError, MissingFileError

from ..coco import COCOSummary, check_coco

__all__ = [
    "CUSTOM_TRAIN_NAME",
    "CUSTOM_VAL_NAME",
    "DatasetError",
    "DatasetFiles",
    "check_datasets",
    "custom_datasets",
    "dataset_files",
    "register_datasets",
]

CUSTOM_TRAIN_NAME = "sebench_coco_train"
CUSTOM_VAL_NAME = "sebench_coco_val"


class DatasetError(InputError):
    """A data set named in the config is unknown or its files are missing or malformed."""


@dataclass(frozen=True)
class DatasetFiles:
    """A COCO-format data set: its catalog name, instances JSON and image folder.

    Args:
        name (str): the name in detectron2's ``DatasetCatalog`` (and ``DATASETS.TRAIN/TEST``).
        json_file (str): the COCO instances JSON.
        image_root (str): the folder the images' ``file_name`` is relative to.
    """

    name: str
    json_file: str
    image_root: str


def register_datasets(datasets: list[DatasetFiles]) -> None:
    """Register COCO-format data sets given by path in detectron2's catalogs.

    Registering the same name again with other files replaces the entry, so one process can run
    several experiments (the tests do); with the same files it is a no-op.

    Args:
        datasets (list[DatasetFiles]): the data sets to register.
    """
    for dataset in datasets:
        if dataset.name in DatasetCatalog.list():
            metadata = MetadataCatalog.get(dataset.name)
            current = (getattr(metadata, "json_file", None), getattr(metadata, "image_root", None))
            if current == (dataset.json_file, dataset.image_root):
                continue
            DatasetCatalog.remove(dataset.name)
            MetadataCatalog.remove(dataset.name)
        register_coco_instances(dataset.name, {}, dataset.json_file, dataset.image_root)


def _coco_names() -> list[str]:
    return sorted(name for name in DatasetCatalog.list() if name.startswith("coco_2017"))


def dataset_files(name: str) -> DatasetFiles:
    """The instances JSON and image folder of a data set registered in detectron2's catalogs.

    Args:
        name (str): a catalog name, e.g. ``coco_2017_val``.

    Raises:
        DatasetError: the name is not registered, or not a COCO-format data set.
    """
    if name not in DatasetCatalog.list():
        raise DatasetError(
            f"data set {name!r} is not registered in detectron2; use a builtin COCO name "
            f"({', '.join(_coco_names())}) with DETECTRON2_DATASETS set, or give the files with "
            "--train-json/--train-images and --val-json/--val-images"
        )
    metadata = MetadataCatalog.get(name)
    json_file = getattr(metadata, "json_file", None)
    image_root = getattr(metadata, "image_root", None)
    if json_file is None or image_root is None:
        raise DatasetError(
            f"data set {name!r} is not a COCO-format data set (its metadata has no json_file "
            "and image_root); this benchmark trains and evaluates on COCO instances files"
        )
    return DatasetFiles(name, str(json_file), str(image_root))


def _layout_hint(name: str) -> str:
    if not name.startswith("coco_"):
        return ""
    root = os.environ.get("DETECTRON2_DATASETS", "datasets")
    return (
        f" (builtin data set {name!r} is read from DETECTRON2_DATASETS={root!r}: expected "
        "coco/annotations/instances_{train,val}2017.json and coco/{train,val}2017/ under it)"
    )


def check_datasets(names: list[str]) -> dict[str, COCOSummary]:
    """Check each named data set with ``check_coco``: files exist, annotations are well formed.

    Args:
        names (list[str]): catalog names (``DATASETS.TRAIN`` and ``DATASETS.TEST``).

    Returns:
        name -> ``COCOSummary``, each name once, in order (``degenerate_annotation_ids`` are
        the boxes the loaders skip).

    Raises:
        DatasetError: an unknown name, a missing file or folder, or a malformed file; the
            message names the file and the annotation or image id.
    """
    summaries: dict[str, COCOSummary] = {}
    for name in dict.fromkeys(names):  # each once, in order
        files = dataset_files(name)
        try:
            summaries[name] = check_coco(files.json_file, files.image_root)
        except MissingFileError as err:
            raise DatasetError(f"data set {name!r}: {err}{_layout_hint(name)}") from err
        except InputError as err:
            raise DatasetError(f"data set {name!r}: {err}") from err
        _check_categories(name, files, summaries[name])
    return summaries


def _check_categories(name: str, files: DatasetFiles, summary: COCOSummary) -> None:
    """A data set registered with fixed classes (the builtin COCO ones: COCO's 80) must list
    those categories; detectron2 would otherwise fail in the data loader with an assertion."""
    expected = getattr(MetadataCatalog.get(name), "thing_classes", None)
    found = [summary.categories[i] for i in sorted(summary.categories)]
    if expected is not None and list(expected) != found:
        shown = found if len(found) <= 8 else [*found[:8], "..."]
        raise DatasetError(
            f"data set {name!r} is registered with {len(expected)} categories "
            f"({', '.join(expected[:3])}, ...) but {files.json_file} has {len(found)}: {shown}; "
            "give other COCO-format data with --train-json/--val-json instead"
        )


def custom_datasets(
    train_json: str | None,
    train_images: str | None,
    val_json: str | None,
    val_images: str | None,
) -> tuple[list[DatasetFiles], list[DatasetFiles]]:
    """The train and val data sets given by path on the command line, each JSON with its folder.

    Returns:
        (train, val): lists of zero or one ``DatasetFiles``.

    Raises:
        DatasetError: a JSON without its image folder or the other way round.
    """
    pairs = []
    for split, json_file, images, name in (
        ("train", train_json, train_images, CUSTOM_TRAIN_NAME),
        ("val", val_json, val_images, CUSTOM_VAL_NAME),
    ):
        if (json_file is None) != (images is None):
            raise DatasetError(
                f"--{split}-json and --{split}-images go together: give the COCO instances "
                f"JSON and the image folder of the {split} split"
            )
        if json_file is None:
            pairs.append([])
        else:
            pairs.append([DatasetFiles(name, str(Path(json_file)), str(Path(images)))])
    return pairs[0], pairs[1]
