"""Places365 and ImageNet-style image-folder data modules (224 crops of 256-pixel images).

Places365 (Zhou et al., "Places: A 10 million image database for scene recognition", TPAMI 2017,
http://places2.csail.mit.edu) is read by torchvision's own ``torchvision.datasets.Places365``, so
the on-disk layout, the file-list format and the download are torchvision's. The SE paper (Hu et
al., arXiv:1709.01507, Sec. 6.3, Table 6) trains ResNet-152 and SE-ResNet-152 from scratch on
Places365-Challenge and reports single 224 centre-crop error on the 36,500 validation images,
which is why the validation split serves both ``validate`` and ``test`` here.

The transforms, the decode paths (reduced-size CPU decoding, PIL, GPU) and reading from litdata
shards are the shared :class:`~.image_module.CropDataModule`'s; this file reads the two layouts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets

from backbones.errors import InputError, MissingFileError

from .decode import ImageLoader
from .image_module import CropDataModule

PLACES365_NUM_CLASSES = 365
PLACES365_TRAIN_SPLITS = ("train-standard", "train-challenge")

# Eagerly checked entries per file list: stat-ing all 8M files of Places365-Challenge would take
# minutes on a network file system, while a spread-out sample catches the usual mistakes (wrong
# data_dir, small/large mix-up, an archive not extracted or extracted under another name).
_SAMPLE_CHECKS = 64


def places365_layout(
    data_dir: str | Path, split: str = "train-standard", small: bool = True
) -> str:
    """The directory layout torchvision's Places365 expects, as text for error messages.

    Args:
        data_dir: the dataset root.
        split: the training split, ``"train-standard"`` or ``"train-challenge"``.
        small: the 256x256 images (True) or the large ones (False).
    """
    size = "256" if small else "large"
    variant = split.split("-")[1]
    return (
        f"expected layout (torchvision.datasets.Places365, split={split!r}, small={small}):\n"
        f"  {data_dir}/categories_places365.txt      '/a/airfield 0' per line, 365 lines\n"
        f"  {data_dir}/places365_{split.replace('-', '_')}.txt   '/a/airfield/00000001.jpg 0'\n"
        f"  {data_dir}/places365_val.txt             'Places365_val_00000001.jpg 165'\n"
        f"  {data_dir}/data_{size}_{variant}/a/airfield/00000001.jpg ...\n"
        f"  {data_dir}/val_{size}/Places365_val_00000001.jpg ...\n"
        "Pass --data.download true to download it with torchvision, or point --data.data_dir at "
        "an existing copy."
    )


class _Places365(datasets.Places365):
    """torchvision's Places365 with existence-only list checks and compact per-image storage.

    torchvision checks the MD5 of the file lists: that rejects any list but the official ones
    (a subset made for a quick run, or the tiny trees the tests write) and hashes the 8M-line
    Challenge list in every process at every start. The image archives keep their MD5 check on
    download. The (path, label) list of 8M Python objects is replaced by two numpy arrays:
    DataLoader workers touching Python objects copy their pages (reference counts), which with
    8 workers per GPU would duplicate about 1.5 GB per worker.
    """

    def __init__(
        self,
        root: str,
        *,
        split: str,
        small: bool,
        download: bool = False,
        decode: Callable[[bytes, str], Any] | None = None,
        layout: str = "",
    ) -> None:
        self.layout = layout  # read by _check_integrity, which super().__init__ calls
        super().__init__(root, split=split, small=small, download=download)
        self.list_file = os.path.join(root, self._FILE_LIST_META[split][0])
        self.loader = ImageLoader(f"listed in {self.list_file}", decode)
        prefix = len(self.images_dir) + len(os.sep)
        self.files = np.array([p[prefix:].encode() for p, _ in self.imgs])
        self.labels = self.targets
        del self.imgs, self.targets

    def _check_integrity(self, file: str, md5: str, download: bool) -> bool:
        if os.path.isfile(file):
            return True
        if download:
            return False  # torchvision then downloads the file lists
        raise MissingFileError(f"{file} does not exist;\n{self.layout}")

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        """The image file of item ``index``."""
        return os.path.join(self.images_dir, self.files[index].decode())

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.loader(self.path(index)), int(self.labels[index])


def read_places365_categories(file: str | Path) -> list[str]:
    """Class names of ``categories_places365.txt``, in label order, after checking the format.

    Args:
        file: the categories file, ``NAME INDEX`` per line with indices 0..N-1.

    Raises:
        ValueError: a malformed line, or indices that are not 0..N-1 (names the file and line).
    """
    names: dict[int, str] = {}
    with open(file) as fh:
        for line_no, line in enumerate(fh, 1):
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise InputError(
                    f"{file}, line {line_no}: expected 'NAME INDEX', got {line.rstrip()!r}"
                )
            names[int(fields[1])] = fields[0]
    if sorted(names) != list(range(len(names))) or not names:
        raise InputError(
            f"{file}: class indices must be 0..N-1 with N > 0, got {sorted(names)[:10]}..."
        )
    return [names[i] for i in range(len(names))]


def _read_list(
    root: str,
    *,
    split: str,
    small: bool,
    decode: Callable[[bytes, str], Any] | None,
    num_classes: int,
    layout: str,
) -> _Places365:
    """Build torchvision's dataset for one split, then check its labels and a sample of files."""
    list_file = os.path.join(root, datasets.Places365._FILE_LIST_META[split][0])
    try:
        dataset = _Places365(root, split=split, small=small, decode=decode, layout=layout)
    except InputError:
        raise  # our own checks (a missing file list) already name the problem
    except (ValueError, AttributeError, TypeError) as err:
        # torchvision's parser fails on a blank line or a non-integer label without naming either
        problem = _first_malformed_line(list_file)
        if problem is None:
            raise  # every line parses: the failure is not the file list's
        raise InputError(f"{list_file}: {problem} ({err})") from err
    _check_labels(dataset.labels, num_classes=num_classes, list_file=list_file)
    dataset.labels = np.asarray(dataset.labels, dtype=np.int64)
    _check_sample(dataset, list_file=list_file, layout=layout)
    return dataset


def _first_malformed_line(list_file: str) -> str | None:
    line_no = 0
    with open(list_file) as fh:
        for line_no, line in enumerate(fh, 1):
            fields = line.split()
            if len(fields) not in (1, 2) or not fields[-1].lstrip("-").isdigit():
                return f"line {line_no}: expected 'IMAGE LABEL', got {line.rstrip()!r}"
    return None if line_no else "the file list is empty"


def _check_labels(labels: Sequence[int | None], *, num_classes: int, list_file: str) -> None:
    for index, label in enumerate(labels):  # a Python loop: 8M labels take well under a second
        if label is None:
            raise InputError(f"{list_file}, line {index + 1}: no label (expected 'IMAGE LABEL')")
        if not 0 <= label < num_classes:
            raise InputError(
                f"{list_file}, line {index + 1}: label {label} is outside 0..{num_classes - 1} "
                f"(num_classes={num_classes} from categories_places365.txt)"
            )


def _check_sample(dataset: _Places365, *, list_file: str, layout: str) -> None:
    images_dir = dataset.images_dir
    if not os.path.isdir(images_dir):
        hint = ""
        # The training archives extract to data_256/ (or data_large/); torchvision renames that
        # folder after its own download, so a hand-extracted archive has the other name.
        extracted = images_dir.rsplit("_", 1)[0]
        if dataset.split.startswith("train") and os.path.isdir(extracted):
            name = os.path.basename(images_dir)
            hint = f" ({extracted} exists: torchvision names that folder {name})"
        raise MissingFileError(f"image folder {images_dir} does not exist{hint};\n{layout}")
    count = len(dataset.files)
    for index in sorted(
        {round(i * (count - 1) / max(_SAMPLE_CHECKS - 1, 1)) for i in range(_SAMPLE_CHECKS)}
    ):
        path = dataset.path(index)
        if not os.path.isfile(path):
            raise MissingFileError(f"{list_file}, line {index + 1}: image {path} does not exist")


# Appended to both modules' docstrings, where LightningCLI reads each argument's --help.
_CROP_MODULE_ARGS = """
        batch_size: images per batch and per process (default: 256).
        num_workers: DataLoader worker processes per process (default: 8).
        train_crop: ``"random_resized"`` (RandomResizedCrop) or ``"random"`` (resize to
            ``resize_size``, random ``crop_size`` crop) (default: ``"random_resized"``).
        crop_size: training and evaluation crop side (default: 224).
        resize_size: shorter side before the ``"random"`` and the centre crop (default: 256).
        decode: ``"cpu"`` (JPEGs decoded at reduced size in the workers), ``"pil"`` (PIL +
            torchvision transforms in the workers) or ``"gpu"`` (workers read bytes; decoding
            and cropping on the training device) (default: ``"cpu"``).
        format: ``"folder"`` (the files) or ``"shards"`` (litdata shards written by
            ``sebench prepare-shards``) (default: ``"folder"``).
        shards: the shards' folder or URL, for ``format="shards"`` (default: None).
        seed: shuffling seed of the shards (default: the run's ``seed_everything``)."""


class Places365DataModule(CropDataModule):
    """Places365 through ``torchvision.datasets.Places365``; validation = the 36,500 val images.

    Args:
        data_dir: dataset root in torchvision's Places365 layout (default: ``data/places365``).
        split: training list, ``"train-standard"`` (1.8M images) or ``"train-challenge"`` (8M,
            the paper's Table 6) (default: ``"train-standard"``).
        small: the 256x256 images (True) or the large ones (False) (default: True).
        download: download missing lists and images in ``prepare_data`` (default: False).
    """  # the loader, crop, decode and shard arguments: _CROP_MODULE_ARGS, appended below

    def __init__(
        self,
        data_dir: str = "data/places365",
        split: Literal["train-standard", "train-challenge"] = "train-standard",
        small: bool = True,
        *,
        batch_size: int = 256,
        num_workers: int = 8,
        train_crop: Literal["random_resized", "random"] = "random_resized",
        crop_size: int = 224,
        resize_size: int = 256,
        decode: Literal["cpu", "pil", "gpu"] = "cpu",
        format: Literal["folder", "shards"] = "folder",
        shards: str | None = None,
        seed: int | None = None,
        download: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            train_crop=train_crop,
            crop_size=crop_size,
            resize_size=resize_size,
            decode=decode,
            format=format,
            shards=shards,
            seed=seed,
        )
        if split not in PLACES365_TRAIN_SPLITS:
            raise InputError(f"data.split must be one of {PLACES365_TRAIN_SPLITS}, got {split!r}")
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.split = split
        self.small = small
        self.download = download

    @property
    def dataset_name(self) -> str:
        """``"places365"``."""
        return "places365"

    @property
    def categories_file(self) -> str:
        return os.path.join(self.data_dir, datasets.Places365._CATEGORIES_META[0])

    @property
    def layout(self) -> str:
        """The expected layout, for error messages."""
        return places365_layout(self.data_dir, self.split, self.small)

    def _num_classes_from_files(self) -> int:
        """Lines of ``categories_places365.txt``; 365 (the official count) until it exists.

        The CLI reads this when it builds the model, before ``prepare_data`` may download the
        lists, so an absent file must not be an error here; ``setup`` reports it.
        """
        names = self.class_names()
        return PLACES365_NUM_CLASSES if names is None else len(names)

    def class_names(self) -> list[str] | None:
        """The names of ``categories_places365.txt``, or None where it does not exist."""
        if os.path.isfile(self.categories_file):
            return read_places365_categories(self.categories_file)
        return None

    def prepare_data(self) -> None:
        if not self.download or self.format == "shards":
            return
        for split in (self.split, "val"):
            try:
                _Places365(self.data_dir, split=split, small=self.small, download=True, layout="")
            except (OSError, RuntimeError) as err:  # URLError is an OSError; bad MD5 a RuntimeError
                raise MissingFileError(
                    f"could not download Places365 ({split}) into {self.data_dir}: {err};\n"
                    f"{self.layout}"
                ) from err

    def _check_files(self) -> None:
        if not os.path.isfile(self.categories_file):
            raise MissingFileError(f"{self.categories_file} does not exist;\n{self.layout}")

    def _read(self, split: str, decode: Callable[[bytes, str], Any] | None) -> _Places365:
        return _read_list(
            self.data_dir,
            split=self.split if split == "train" else "val",
            small=self.small,
            decode=decode,
            num_classes=self.num_classes,
            layout=self.layout,
        )

    def _folder_dataset(self, split: str) -> Dataset:
        return self._read(split, self.decoder(train=split == "train"))

    def source_samples(self, split: str) -> list[tuple[str, int]]:
        self._check_files()
        dataset = self._read(split, None)
        return [(dataset.path(i), int(label)) for i, label in enumerate(dataset.labels)]


class ImageFolderDataModule(CropDataModule):
    """An ImageNet-style tree: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/<class>/*.jpg``.

    Args:
        data_dir: root holding ``train/`` and ``val/``, each with one folder per class.
    """  # the loader, crop, decode and shard arguments: _CROP_MODULE_ARGS, appended below

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size: int = 256,
        num_workers: int = 8,
        train_crop: Literal["random_resized", "random"] = "random_resized",
        crop_size: int = 224,
        resize_size: int = 256,
        decode: Literal["cpu", "pil", "gpu"] = "cpu",
        format: Literal["folder", "shards"] = "folder",
        shards: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            train_crop=train_crop,
            crop_size=crop_size,
            resize_size=resize_size,
            decode=decode,
            format=format,
            shards=shards,
            seed=seed,
        )
        self.save_hyperparameters()
        self.data_dir = str(data_dir)

    @property
    def dataset_name(self) -> str:
        """``"imagefolder"``."""
        return "imagefolder"

    def _num_classes_from_files(self) -> int:
        """Number of class folders under ``data_dir/train``."""
        return len(self._classes("train"))

    def class_names(self) -> list[str] | None:
        """The class folders of ``data_dir/train``, or None where it does not exist."""
        if os.path.isdir(os.path.join(self.data_dir, "train")):
            return self._classes("train")
        return None

    def _classes(self, part: str) -> list[str]:
        folder = os.path.join(self.data_dir, part)
        if not os.path.isdir(folder):
            raise MissingFileError(
                f"{folder} does not exist; expected layout (torchvision ImageFolder): "
                f"{self.data_dir}/train/<class>/<image>.jpg and "
                f"{self.data_dir}/val/<class>/<image>.jpg"
            )
        classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if not classes:
            raise MissingFileError(
                f"{folder} has no class folders; expected {folder}/<class>/<image>.jpg"
            )
        return classes

    def _check_files(self) -> None:
        train_classes, val_classes = self._classes("train"), self._classes("val")
        if train_classes != val_classes:
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise InputError(
                f"class folders of {self.data_dir}/train and {self.data_dir}/val differ: only in "
                f"train: {only_train[:10]}, only in val: {only_val[:10]}"
            )

    def _read(self, split: str, decode: Callable[[bytes, str], Any] | None) -> datasets.ImageFolder:
        root = os.path.join(self.data_dir, split)
        return datasets.ImageFolder(root, loader=ImageLoader(f"under {root}", decode))

    def _folder_dataset(self, split: str) -> Dataset:
        return self._read(split, self.decoder(train=split == "train"))

    def source_samples(self, split: str) -> list[tuple[str, int]]:
        self._check_files()
        return list(self._read(split, None).samples)


Places365DataModule.__doc__ = (Places365DataModule.__doc__ or "") + _CROP_MODULE_ARGS
ImageFolderDataModule.__doc__ = (ImageFolderDataModule.__doc__ or "") + _CROP_MODULE_ARGS
