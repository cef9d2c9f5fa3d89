"""What the image-file data modules share: transforms, the three decode paths, shards, loaders.

Augmentation: random-resized 224 crops (Inception-style, the paper's ImageNet recipe) or random
224 crops of images resized to 256 (the Places365 recipe), plus horizontal flips; evaluation
resizes to 256 and takes the 224 centre crop. Both normalise with the ImageNet mean and std.

Three ways to produce those crops (``decode``), all with torchvision's crop parameters:

* ``"cpu"`` (default): JPEGs decoded at reduced size (:mod:`.decode`); training batches leave
  the workers as uint8 and are normalised on the device after the transfer
  (``on_after_batch_transfer``), evaluation items are normalised in the workers;
* ``"pil"``: PIL + ``transforms.v2`` in the workers, the plain path;
* ``"gpu"``: workers read bytes and plan the crop; decoding and cropping run on the training
  device (:mod:`.gpu_decode`) in ``transfer_batch_to_device``.

Two ways to read the files (``format``): one file at a time from the dataset's folder layout, or
litdata shards written by ``sebench prepare-shards`` (:mod:`.shards`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from backbones.constants import IMAGENET_MEAN, IMAGENET_STD
from backbones.errors import InputError

from .decode import CropSampler, Normalize, PILDecode, ReducedDecode
from .gpu_decode import DeviceDecoder, EncodedBatch, PlanOnly, collate_encoded
from .shards import (
    ShardSamples,
    ShardsInfo,
    check_info,
    read_info,
    training_loader,
    training_stream,
)

TRAIN_CROPS = ("random_resized", "random")
DECODES = ("cpu", "pil", "gpu")
FORMATS = ("folder", "shards")


def train_transform(*, train_crop: str, crop_size: int, resize_size: int) -> v2.Compose:
    """Training transform: random crop + horizontal flip + ImageNet normalisation.

    Args:
        train_crop: ``"random_resized"`` (RandomResizedCrop to ``crop_size``) or ``"random"``
            (resize the shorter side to ``resize_size``, then a random ``crop_size`` crop).
        crop_size: side of the square crop fed to the network.
        resize_size: shorter side after resizing, for ``"random"``.
    """
    if train_crop == "random_resized":
        crop = [v2.RandomResizedCrop(crop_size, antialias=True)]
    elif train_crop == "random":
        crop = [v2.Resize(resize_size, antialias=True), v2.RandomCrop(crop_size)]
    else:
        raise InputError(f"data.train_crop must be one of {TRAIN_CROPS}, got {train_crop!r}")
    return v2.Compose([*crop, v2.RandomHorizontalFlip(), *_to_normalised_tensor()])


def eval_transform(*, crop_size: int, resize_size: int) -> v2.Compose:
    """Evaluation transform: resize the shorter side, centre crop, ImageNet normalisation.

    Args:
        crop_size: side of the centre crop.
        resize_size: shorter side after resizing.
    """
    resize = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(crop_size)]
    return v2.Compose([*resize, *_to_normalised_tensor()])


def _to_normalised_tensor() -> list[Callable]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"data.{key} must be one of {allowed}, got {value!r}")


def _check_sizes(crop_size: int, resize_size: int) -> None:
    if not 0 < crop_size <= resize_size:
        raise InputError(
            f"data.crop_size must be positive and at most data.resize_size, got crop_size="
            f"{crop_size}, resize_size={resize_size} (the paper: 224 crops of 256 images)"
        )


class CropDataModule(L.LightningDataModule):
    """Loaders, decode paths and shards of the image-file modules; subclasses give the files.

    A subclass defines ``dataset_name``, :meth:`class_names`, :meth:`source_samples`,
    :meth:`_check_files`, :meth:`_folder_dataset` and ``_num_classes_from_files``.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        num_workers: int,
        train_crop: str,
        crop_size: int,
        resize_size: int,
        decode: str,
        format: str,
        shards: str | None,
        seed: int | None,
    ) -> None:
        super().__init__()
        _check_choice("train_crop", train_crop, TRAIN_CROPS)
        _check_choice("decode", decode, DECODES)
        _check_choice("format", format, FORMATS)
        _check_sizes(crop_size, resize_size)
        if format == "shards" and not shards:
            raise InputError(
                "data.format 'shards' needs data.shards, the folder or URL that "
                "`sebench prepare-shards` wrote"
            )
        self.batch_size, self.num_workers = batch_size, num_workers
        self.decode, self.format, self.shards, self._seed = decode, format, shards, seed
        self.train_transform = train_transform(
            train_crop=train_crop, crop_size=crop_size, resize_size=resize_size
        )
        self.eval_transform = eval_transform(crop_size=crop_size, resize_size=resize_size)
        sampler = dict(train_crop=train_crop, crop_size=crop_size, resize_size=resize_size)
        self._samplers = {train: CropSampler(train=train, **sampler) for train in (True, False)}
        self._normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self._device_decoder = DeviceDecoder(self._normalize)
        self._shards_info: ShardsInfo | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    # -- what a subclass gives -----------------------------------------------------------------

    def class_names(self) -> list[str] | None:
        """Class names in label order from the dataset's own files (None where they are absent)."""
        raise NotImplementedError

    def source_samples(self, split: str) -> list[tuple[str, int]]:
        """``(path, label)`` of every image of ``"train"`` or ``"val"``, from the folder layout."""
        raise NotImplementedError

    def _check_files(self) -> None:
        raise NotImplementedError

    def _folder_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def _num_classes_from_files(self) -> int:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    @property
    def synthetic(self) -> bool:
        """Always False: these modules only read real images."""
        return False

    @property
    def seed(self) -> int:
        """``data.seed``, else the run's ``seed_everything`` seed (read when used), else 0."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) if self._seed is None else self._seed

    @property
    def shards_info(self) -> ShardsInfo:
        """The description written with the shards (read once)."""
        if self._shards_info is None:
            self._shards_info = read_info(str(self.shards))
        return self._shards_info

    @property
    def num_classes(self) -> int:
        """From the shards' class list when reading shards, else from the dataset's files."""
        if self.format == "shards":
            return len(self.shards_info.classes)
        return self._num_classes_from_files()

    def decoder(self, *, train: bool) -> Callable[[Any, str], Any]:
        """``(encoded bytes, name) -> sample`` of the chosen decode path, for one split."""
        if self.decode == "pil":
            return PILDecode(self.train_transform if train else self.eval_transform)
        if self.decode == "gpu":
            return PlanOnly(self._samplers[train])
        # Training batches stay uint8 until they are on the device (a quarter of the bytes to
        # collate, pin and copy); evaluation items are normalised here, so that the dataset of
        # val_dataloader() gives what the model takes (the analysis commands sample from it).
        return ReducedDecode(self._samplers[train], None if train else self._normalize)

    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        if self.format == "shards":
            self._setup_shards(fit)
            return
        self._check_files()
        if fit and self.train_set is None:
            self.train_set = self._folder_dataset("train")
        if self.val_set is None:
            self.val_set = self._folder_dataset("val")

    def _setup_shards(self, fit: bool) -> None:
        info = self.shards_info
        check_info(
            info, shards=str(self.shards), dataset=self.dataset_name, classes=self.class_names()
        )
        if fit and self.train_set is None:
            # Built here, after the process group is up: litdata shares the epoch among ranks.
            decode = self.decoder(train=True)
            self.train_set = training_stream(str(self.shards), decode, seed=self.seed)
        if self.val_set is None:
            decode = self.decoder(train=False)
            self.val_set = ShardSamples(str(self.shards), "val", decode, info.sizes["val"])

    def train_dataloader(self) -> DataLoader:
        if self.format == "shards" and self.train_set is not None:
            return training_loader(
                self.train_set,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=self._collate_fn,
                pin_memory=self._pin_memory,
            )
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        # No labelled test set is public: the paper reports validation error (Table 6).
        return self._loader(self.val_set, shuffle=False)

    @property
    def _collate_fn(self) -> Callable | None:
        return collate_encoded if self.decode == "gpu" else None

    @property
    def _pin_memory(self) -> bool:
        # The GPU path's batches are bytes that the decoder copies itself.
        return torch.cuda.is_available() and self.decode != "gpu"

    def _loader(self, dataset: Dataset | None, *, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self._collate_fn,
            pin_memory=self._pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """GPU path: decode, crop and normalise an encoded batch on ``device``."""
        if isinstance(batch, EncodedBatch):
            return self._device_decoder(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """CPU path: normalise the uint8 training batches, now on the device."""
        images, labels = batch
        if images.dtype == torch.uint8:  # a dtype check reads no data: no device sync
            images = self._normalize(images)
        return images, labels
