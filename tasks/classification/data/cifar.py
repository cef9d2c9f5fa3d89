"""CIFAR-10 / CIFAR-100 data module with a DataLoader path and a GPU-resident path.

The SE paper (Hu et al., arXiv:1709.01507, Sec. 5.1, Tables 4 and 5) trains on all 50,000
training images and reports the error on the 10,000 test images, with the augmentation of the
original papers: 4-pixel zero padding, a random 32x32 crop, a horizontal flip, mean/std
normalisation, and Cutout (DeVries & Taylor, "Improved Regularization of Convolutional Neural
Networks with Cutout", arXiv:1708.04552) for Shake-Shake / Shake-Even.

The files are read by torchvision's own ``CIFAR10`` / ``CIFAR100`` classes, so the layout
(``<data_dir>/cifar-10-batches-py/`` or ``<data_dir>/cifar-100-python/``) and the download are
torchvision's. torchvision compares every file with the md5 of the official archive inside its
constructor; this module runs that same comparison itself (with torchvision's md5 table and
``check_md5``) so that a mismatch gets an error naming the file, and then reads through
torchvision's classes with the md5 table blanked. ``verify_md5=False`` skips the comparison for
copies made on purpose (subsets, tiny files written by tests); everything else is unchanged.

Two input paths give the same augmentation distribution:

* the DataLoader path: torchvision dataset + ``transforms.v2`` in worker processes;
* the GPU-resident path (``gpu_resident=True``, after airbench's ``CifarLoader``): the uint8
  dataset sits on the training device and whole batches are cropped, flipped, normalised and
  cut out there with a few tensor ops, with no worker processes. It works on a CPU device too.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_md5
from torchvision.transforms import v2

from backbones.constants import CIFAR_MEAN as MEAN
from backbones.constants import CIFAR_STD as STD
from backbones.errors import InputError, MissingFileError

DATASETS = ("cifar10", "cifar100")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGE_SIZE = 32
PADDING = 4


class _UnverifiedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 reader with its md5 table blanked: files only have to exist."""

    train_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict] = {**CIFAR10.meta, "md5": None}


class _UnverifiedCIFAR100(CIFAR100):
    """torchvision's CIFAR100 reader with its md5 table blanked: files only have to exist."""

    train_list: ClassVar[list] = [[name, None] for name, _ in CIFAR100.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in CIFAR100.test_list]
    meta: ClassVar[dict] = {**CIFAR100.meta, "md5": None}


_TORCHVISION = {"cifar10": CIFAR10, "cifar100": CIFAR100}
_READERS = {"cifar10": _UnverifiedCIFAR10, "cifar100": _UnverifiedCIFAR100}


def random_crop_flip(
    images: Tensor, *, padding: int = PADDING, generator: torch.Generator | None = None
) -> Tensor:
    """Zero-pad, take a random crop of the original size and flip half of the images.

    One gather does the whole batch: each output pixel indexes the padded batch at its image's
    random offset, with the column index mirrored for the flipped images.

    Args:
        images: uint8 or float batch, ``[B, H, W, C]`` (channels last, as stored).
        padding: zero padding on every side (4); offsets are uniform in ``0..2*padding``.
        generator: random generator on ``images.device`` (None: torch's global one).

    Returns:
        The augmented batch, same shape, dtype and device.
    """
    batch, height, width, _ = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
    flip = torch.rand((batch, 1), generator=generator, device=device) < 0.5
    rows = dy + torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    cols = dx + torch.where(flip, width - 1 - cols, cols)
    index = torch.arange(batch, device=device)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]]


def cutout_(images: Tensor, size: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Zero a ``size`` x ``size`` square of every image in place (Cutout, DeVries & Taylor).

    As in the reference code, the centre is uniform over the whole image and the square is
    clipped at the borders, so squares near an edge are smaller. (For an odd ``size`` the square
    is ``size`` wide; the reference code's would be ``size - 1``.)

    Args:
        images: float batch ``[B, C, H, W]``, already normalised (so zero is the mean colour).
        size: side of the square in pixels; 0 leaves the batch unchanged.
        generator: random generator on ``images.device`` (None: torch's global one).

    Returns:
        ``images``, modified in place.
    """
    if size <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    cy = torch.randint(0, height, (batch, 1, 1, 1), generator=generator, device=device)
    cx = torch.randint(0, width, (batch, 1, 1, 1), generator=generator, device=device)
    ys = torch.arange(height, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, 1, width)
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill_(inside, 0.0)


class Cutout:
    """Per-image Cutout for the DataLoader path: :func:`cutout_` on a ``[C, H, W]`` tensor.

    Args:
        size: side of the square in pixels.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Tensor) -> Tensor:
        image = image.as_subclass(Tensor).clone()  # a plain tensor, not torchvision's Image
        return cutout_(image.unsqueeze(0), self.size).squeeze(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def train_transform(dataset: str, cutout: int = 0) -> v2.Compose:
    """The paper's training transform of one PIL image: pad 4 + random crop + flip, mean/std.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"`` (picks the mean and std).
        cutout: side of the Cutout square after normalisation (0: none).
    """
    steps = [v2.RandomCrop(IMAGE_SIZE, padding=PADDING), v2.RandomHorizontalFlip()]
    steps += eval_transform(dataset).transforms
    return v2.Compose(steps + ([Cutout(cutout)] if cutout > 0 else []))


def eval_transform(dataset: str) -> v2.Compose:
    """Evaluation transform of one PIL image: mean/std normalisation only.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN[dataset], STD[dataset]),
        ]
    )


def _mix_seed(*parts: int) -> int:
    # Independent streams for (seed, epoch, rank, purpose), unlike seed + epoch, which repeats.
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def shard_indices(order: Tensor, *, rank: int, world_size: int) -> Tensor:
    """This process's share of an epoch's order, as ``DistributedSampler`` would give it.

    The order is first extended by wrapping around to a multiple of ``world_size`` so that
    every process runs the same number of steps (a DDP process with one step more would wait
    forever for the others' gradients); then process ``rank`` takes ``order[rank::world_size]``.

    Args:
        order: indices of the whole epoch, ``[N]``.
        rank: this process, in ``0..world_size-1``.
        world_size: number of processes.
    """
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in 0..{world_size - 1}, got {rank}")
    total = math.ceil(len(order) / world_size) * world_size
    if total > len(order):
        order = order.repeat(math.ceil(total / len(order)))[:total]
    return order[rank::world_size]


class GPUResidentLoader:
    """Batches of a whole dataset kept on one device, augmented there.

    An iterable, not a ``torch.utils.data.DataLoader``: Lightning 2.6 injects a
    ``DistributedSampler`` only into ``DataLoader`` instances (its data connector's
    ``_prepare_dataloader`` returns any other iterable untouched), starts no workers for it and
    counts its batches with ``len()``, so this loader does its own sharding. Every epoch draws
    a new permutation from ``(seed, epoch)``, the same in every process, and each process takes
    its shard; the augmentation draws from ``(seed, epoch, rank)``. An epoch is therefore
    reproducible, which makes a resumed run continue exactly where it stopped.

    Args:
        images: uint8 ``[N, H, W, C]`` on the device the batches should be on.
        labels: int64 ``[N]`` on the same device.
        batch_size: images per batch of this process; the last batch may be smaller.
        mean: per-channel mean of the pixel values scaled to [0, 1].
        std: per-channel std, same scale.
        train: shuffle and augment (crop, flip, Cutout); False: the stored order, normalised only.
        cutout: side of the Cutout square (0: none); training only.
        seed: base seed of the permutations and the augmentation (0).
        rank: this process's rank (0).
        world_size: number of processes (1).
        epoch_fn: returns the current epoch when an iteration starts (e.g. the trainer's);
            None: the loader counts its own iterations, see :meth:`set_epoch`.
        memory_format: memory format of the image batches; None (default) leaves them in the
            channels-last strides they are built in, with no copy, for the model to convert
            once if it needs another (``ClassificationModule.forward`` does).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        cutout: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
        memory_format: torch.memory_format | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise InputError(
                f"images must be uint8 [N, H, W, C] with one label each, got {images.dtype} "
                f"{tuple(images.shape)} and {len(labels)} labels"
            )
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.cutout = batch_size, train, cutout
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.memory_format = memory_format
        self._epoch_fn = epoch_fn
        self._next_epoch = 0
        # (x / 255 - mean) / std as one multiply-add, in NCHW broadcast form.
        std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std_t), -mean_t / std_t

    @property
    def device(self) -> torch.device:
        """Device of the data and of every batch."""
        return self.images.device

    @property
    def shard_size(self) -> int:
        """Images this process sees per epoch (the dataset divided among processes, rounded up)."""
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (used when no ``epoch_fn`` is given)."""
        self._next_epoch = epoch

    def epoch_indices(self, epoch: int) -> Tensor:
        """Indices this process visits in ``epoch``, in order (on the CPU).

        Args:
            epoch: epoch number; seeds the permutation together with ``seed``.
        """
        if self.train:
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(len(self.images), generator=generator)
        else:
            order = torch.arange(len(self.images))
        return shard_indices(order, rank=self.rank, world_size=self.world_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: nothing runs until the first batch is asked for, so Lightning's
        # iterability probe (a bare iter()) and its early iter() before the epoch's start
        # neither read the epoch too soon nor advance the counter.
        epoch = self._epoch_fn() if self._epoch_fn is not None else self._next_epoch
        self._next_epoch = epoch + 1
        order = self.epoch_indices(epoch).to(self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_mix_seed(self.seed, epoch, self.rank, 1))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._batch(index, generator), self.labels[index]

    def _batch(self, index: Tensor, generator: torch.Generator) -> Tensor:
        images = self.images[index]
        if self.train:
            images = random_crop_flip(images, generator=generator)
        # NHWC storage viewed as NCHW; elementwise ops keep the channels-last strides.
        images = images.permute(0, 3, 1, 2).float() * self._scale + self._shift
        if self.train:
            cutout_(images, self.cutout, generator=generator)
        if self.memory_format is None:
            return images
        return images.contiguous(memory_format=self.memory_format)


def make_synthetic_cifar(
    num_images: int, num_classes: int, *, seed: int, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A learnable stand-in for CIFAR: each class has its own colour and stripe pattern.

    Every image is its class's colour plus a grating of the class's orientation and frequency
    (at a random phase, so crops do not matter) plus per-image colour jitter and pixel noise.
    The class signal survives crop, flip and Cutout, so a network learns it in a few steps;
    the training and test sets share the classes' looks (they depend on ``seed`` only).

    Args:
        num_images: number of images.
        num_classes: number of classes; labels are balanced and shuffled.
        seed: determines everything.
        train: picks the training or the test sample of the same classes.

    Returns:
        ``(data, targets)``: uint8 ``[N, 32, 32, 3]`` and int64 ``[N]``, like torchvision's.
    """
    looks = np.random.default_rng([seed, num_classes, 0])
    colours = looks.uniform(40.0, 215.0, (num_classes, 1, 1, 3)).astype(np.float32)
    angles = looks.uniform(0.0, np.pi, num_classes)
    frequencies = looks.uniform(1.0, 4.0, num_classes)  # periods per image width
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    along = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy
    waves = 2 * np.pi * frequencies[:, None, None] * along
    rng = np.random.default_rng([seed, num_classes, 1 if train else 2])
    targets = rng.permutation(np.arange(num_images) % num_classes).astype(np.int64)
    data = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, num_images, 4096):  # chunks bound the float32 working memory
        label = targets[start : start + 4096]
        phase = rng.uniform(0.0, 2 * np.pi, (len(label), 1, 1)).astype(np.float32)
        image = colours[label] + 30.0 * np.sin(waves[label] + phase)[..., None]
        image += rng.normal(0.0, 8.0, (len(label), 1, 1, 3)).astype(np.float32)
        image += rng.standard_normal(image.shape, dtype=np.float32) * 12.0
        data[start : start + 4096] = np.clip(np.rint(image), 0, 255)
    return data, targets


class SyntheticCIFAR(Dataset):
    """Generated images in the shape of torchvision's CIFAR datasets (``data``, ``targets``).

    Args:
        num_images: number of images.
        num_classes: 10 or 100.
        seed: see :func:`make_synthetic_cifar`.
        train: training or test sample.
        transform: applied to each PIL image, as in torchvision (None: the PIL image).
    """

    def __init__(
        self,
        num_images: int,
        num_classes: int,
        *,
        seed: int,
        train: bool,
        transform: Callable | None = None,
    ) -> None:
        self.data, targets = make_synthetic_cifar(num_images, num_classes, seed=seed, train=train)
        self.targets = targets.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10 or CIFAR-100: all 50k training images; the 10k test images for evaluation.

    The paper reports test-set error (there is no separate validation split), so the test set
    serves both ``validate`` and ``test``. Training batches are augmented as in the paper (pad 4
    + random 32x32 crop + flip, mean/std, optional Cutout after normalisation); evaluation
    batches are normalised only. Batches are ``(float32 [B, 3, 32, 32], int64 [B])``.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/`` (torchvision's
            layout), or where a download goes ("data").
        dataset: ``"cifar10"`` or ``"cifar100"`` ("cifar10").
        batch_size: images per batch and per process (128).
        num_workers: DataLoader worker processes; persistent when > 0 (4). Unused on the
            GPU-resident path.
        download: download the dataset with torchvision when it is absent (False).
        synthetic: use a generated, learnable dataset of the same shape and classes instead of
            the files; needs no data and no network (False).
        synthetic_size: training images of the synthetic dataset; its test set has a fifth as
            many, like CIFAR's 50k / 10k (50000).
        cutout: side in pixels of the Cutout square applied to training images; 0 turns it off
            (0). The paper's Shake-Shake recipe uses 16 on CIFAR-10, Shake-Even 8 on CIFAR-100.
        gpu_resident: keep the whole uint8 dataset on the training device and augment whole
            batches there, with no worker processes; each epoch's order and augmentation then
            follow from ``seed`` and the epoch alone (False).
        pin_memory: pin DataLoader batches when training on a CUDA device (True).
        seed: seed of the synthetic data and of the GPU-resident path's shuffling and
            augmentation (None: the run's ``seed_everything`` seed, else 0, so runs that
            differ only in their seed see different data streams on both input paths).
        verify_md5: compare the files with the md5 sums of the official archive, as torchvision
            does; turn off for a copy you made on purpose, e.g. a subset (True).
    """

    def __init__(
        self,
        data_dir: str = "data",
        dataset: str = "cifar10",
        *,
        batch_size: int = 128,
        num_workers: int = 4,
        download: bool = False,
        synthetic: bool = False,
        synthetic_size: int = 50000,
        cutout: int = 0,
        gpu_resident: bool = False,
        pin_memory: bool = True,
        seed: int | None = None,
        verify_md5: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise InputError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("synthetic_size", synthetic_size, 1),
            ("cutout", cutout, 0),
        ):
            if value < low:
                raise InputError(f"data.{key} must be at least {low}, got {value}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.download, self.synthetic_size, self.cutout = download, synthetic_size, cutout
        self.gpu_resident, self.pin_memory, self._seed = gpu_resident, pin_memory, seed
        self.verify_md5 = verify_md5
        self._dataset, self._synthetic = dataset, synthetic
        self._splits: dict[str, Dataset] = {}  # "train" / "test" -> dataset with transforms
        self._resident: dict[str, tuple[Tensor, Tensor]] = {}  # split -> device copy
        self._files_checked = False

    @property
    def seed(self) -> int:
        """``data.seed``, else the run's ``seed_everything`` seed (read when used), else 0."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) if self._seed is None else self._seed

    @property
    def num_classes(self) -> int:
        """10 for CIFAR-10, 100 for CIFAR-100."""
        return NUM_CLASSES[self._dataset]

    @property
    def synthetic(self) -> bool:
        """Whether the data is generated rather than read from the CIFAR files."""
        return self._synthetic

    @property
    def dataset_name(self) -> str:
        """``"cifar10"`` or ``"cifar100"`` (also when synthetic; see :attr:`synthetic`)."""
        return self._dataset

    @property
    def folder(self) -> Path:
        """``<data_dir>/cifar-10-batches-py`` or ``<data_dir>/cifar-100-python``."""
        return self.data_dir / _TORCHVISION[self._dataset].base_folder

    def prepare_data(self) -> None:
        """Download when asked (once per node); otherwise check that the files are there."""
        if self._synthetic:
            return
        if self.download and self._missing_files():
            reader = _TORCHVISION[self._dataset] if self.verify_md5 else _READERS[self._dataset]
            try:
                reader(str(self.data_dir), train=False, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                reason = f"the download failed: {err}"
                raise MissingFileError(self._absent_message(reason, failed=True)) from err
        if missing := self._missing_files():
            raise MissingFileError(self._absent_message(f"missing: {', '.join(missing)}"))

    def setup(self, stage: str | None = None) -> None:
        """Build the training set (for ``fit``) and the evaluation set, once each."""
        needed = ["train", "test"] if stage in (None, "fit") else ["test"]
        for split in needed:
            if split not in self._splits:
                self._splits[split] = self._build(split == "train")

    def train_dataloader(self) -> DataLoader | GPUResidentLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | GPUResidentLoader:
        """The 10k test images, normalised only."""
        return self._loader("test")

    def test_dataloader(self) -> DataLoader | GPUResidentLoader:
        """The 10k test images, normalised only (the paper's reported split)."""
        return self._loader("test")

    def _build(self, train: bool) -> Dataset:
        if train:
            transform = train_transform(self._dataset, self.cutout)
        else:
            transform = eval_transform(self._dataset)
        if self._synthetic:
            size = self.synthetic_size if train else max(1, self.synthetic_size // 5)
            return SyntheticCIFAR(
                size, self.num_classes, seed=self.seed, train=train, transform=transform
            )
        self._check_files()
        try:
            dataset = _READERS[self._dataset](str(self.data_dir), train=train, transform=transform)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            problem = self._unreadable_file(train)
            if problem is None:
                raise  # every file reads as a CIFAR pickle: the failure is not the data's
            raise InputError(problem) from err
        self._check_labels(dataset, train)
        return dataset

    def _files(self) -> list[tuple[str, str]]:
        """``(name, md5)`` of every file of the layout, as torchvision lists them."""
        tv = _TORCHVISION[self._dataset]
        return [*map(tuple, tv.train_list + tv.test_list), (tv.meta["filename"], tv.meta["md5"])]

    def _missing_files(self) -> list[str]:
        return [name for name, _ in self._files() if not (self.folder / name).is_file()]

    def _check_files(self) -> None:
        if self._files_checked:
            return
        if missing := self._missing_files():
            raise MissingFileError(self._absent_message(f"missing: {', '.join(missing)}"))
        for name, md5 in self._files() if self.verify_md5 else []:
            if not check_md5(self.folder / name, md5):
                raise InputError(
                    f"{self.folder / name}: md5 differs from the official archive's ({md5}); a "
                    "partial download or a modified copy. Delete the folder and download again "
                    "(--data.download true), or, for a copy made on purpose (e.g. a subset), pass "
                    "--data.verify_md5 false"
                )
        self._files_checked = True

    def _check_labels(self, dataset: CIFAR10, train: bool) -> None:
        targets = np.asarray(dataset.targets)
        if len(targets) != len(dataset.data):
            raise InputError(
                f"{self.folder}: {len(dataset.data)} images but {len(targets)} labels in the "
                f"{'training' if train else 'test'} files"
            )
        if len(targets) and (targets.min() >= 0 and targets.max() < self.num_classes):
            return
        # Error path only: reopen the files one by one to name the culprit.
        reader = _READERS[self._dataset]
        for name, _ in reader.train_list if train else reader.test_list:
            with open(self.folder / name, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            labels = np.asarray(entry.get("labels", entry.get("fine_labels", [])))
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if len(bad):
                raise InputError(
                    f"{self.folder / name}: label {int(bad[0])} is outside "
                    f"0..{self.num_classes - 1} ({self._dataset} has {self.num_classes} classes;"
                    f" {len(bad)} bad labels)"
                )
        raise InputError(f"{self.folder}: no images in the {'training' if train else 'test'} files")

    def _absent_message(self, reason: str, *, failed: bool = False) -> str:
        tv = _TORCHVISION[self._dataset]
        root = self.data_dir.resolve()
        names = sorted([name for name, _ in tv.train_list + tv.test_list] + [tv.meta["filename"]])
        title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[self._dataset]
        download = f"  --data.download true    download {tv.url} into {root}"
        if failed:
            download += " (failed here: fetch it where there is a network and extract it there)"
        lines = [
            f"{title} not found in {self.folder.resolve()} ({reason}).",
            "Expected torchvision's layout:",
            f"  {root}{os.sep}",
            f"    {tv.base_folder}{os.sep}",
            *(f"      {name}" for name in names),
            "Ways out:",
            download,
            (
                "  --data.synthetic true   train on a generated dataset of the same shape and"
                " classes (labelled synthetic in every output)"
            ),
            "  --data.data_dir PATH    if the files are elsewhere",
        ]
        return "\n".join(lines)

    def _unreadable_file(self, train: bool) -> str | None:
        """The first file of the split that is not a CIFAR pickle, and why (None: none)."""
        reader = _READERS[self._dataset]
        for name, _ in reader.train_list if train else reader.test_list:
            try:
                with open(self.folder / name, "rb") as handle:
                    entry = pickle.load(handle, encoding="latin1")
                if "data" not in entry or np.asarray(entry["data"]).size % (3 * 32 * 32):
                    return f"{self.folder / name}: no 'data' array of 3072-byte rows"
                if "labels" not in entry and "fine_labels" not in entry:
                    return f"{self.folder / name}: no 'labels' (CIFAR-10) or 'fine_labels' list"
            except Exception as file_err:  # noqa: BLE001 - any failure names this file
                return f"{self.folder / name}: not a CIFAR pickle ({file_err!r})"
        return None

    def _loader(self, split: str) -> DataLoader | GPUResidentLoader:
        if split not in self._splits:
            raise RuntimeError(f"setup() must run before the {split} loader is asked for")
        if self.gpu_resident:
            return self._resident_loader(split)
        device = self._device()
        return DataLoader(
            self._splits[split],
            batch_size=self.batch_size,
            shuffle=split == "train",  # under DDP Lightning swaps in a DistributedSampler
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory and device.type == "cuda",
            drop_last=False,
        )

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _resident_loader(self, split: str) -> GPUResidentLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        cached = self._resident.get(split)
        if cached is None or cached[0].device != device:
            dataset = self._splits[split]
            images = torch.from_numpy(np.ascontiguousarray(dataset.data)).to(device)
            labels = torch.as_tensor(dataset.targets, dtype=torch.int64).to(device)
            cached = self._resident[split] = (images, labels)
        return GPUResidentLoader(
            *cached,
            batch_size=self.batch_size,
            mean=MEAN[self._dataset],
            std=STD[self._dataset],
            train=split == "train",
            cutout=self.cutout,
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
        )
