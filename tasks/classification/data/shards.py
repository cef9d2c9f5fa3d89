"""Sharded streaming of classification splits with Lightning's ``litdata``.

``sebench prepare-shards`` turns the splits of a classification data module (Places365 file
lists, ImageFolder trees) into litdata shards of the original encoded bytes, one folder per
split, to a local folder or any URL litdata writes to (``s3://``, ``gs://``, ...)::

    OUT/train/   index.json + chunk-*.bin: {"image": bytes, "label": int, "index": int, "name": str}
                 (index: the position in the data module's file list, name: the file's path)
    OUT/val/     the same for the validation split
    OUT/meta/    one sample: the dataset name, its class list and the split sizes (JSON)

The training split is written in a fixed random order: litdata shuffles chunks and the samples
within a chunk, so a list sorted by class (as Places365's are) would otherwise give batches of a
few classes each. ``--data.format shards --data.shards OUT`` reads the training split with
``StreamingDataset`` / ``StreamingDataLoader`` (each sample once per epoch across all processes
and nodes, reshuffled every epoch, resumable mid-epoch: Lightning saves the loader's state in
its checkpoints) and the evaluation split by index, as the folder path does, so that every
process count evaluates the same images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from litdata import StreamingDataLoader, StreamingDataset, optimize
from torch.utils.data import Dataset

from backbones.errors import InputError, MissingFileError

from .decode import image_size

SPLITS = ("train", "val")
META = "meta"
FORMAT_VERSION = 1
_WRITE_ORDER_SEED = 0  # the fixed order the training split is written in
# Deserialise only the sample asked for: litdata's default for byte fields deserialises a window
# of neighbours per read, which shuffled reads then throw away (10x the cost per JPEG here).
_PER_ITEM = 0


@dataclasses.dataclass(frozen=True)
class ShardsInfo:
    """What a shard folder holds, written next to the shards.

    Attributes:
        dataset: the data module's ``dataset_name`` (``"places365"``, ``"imagefolder"``).
        classes: class names in label order.
        sizes: samples per split.
        source: where the images were read from.
        version: the shard layout's version.
    """

    dataset: str
    classes: list[str]
    sizes: dict[str, int]
    source: str = ""
    version: int = FORMAT_VERSION


def split_url(shards: str, split: str) -> str:
    """The folder or URL of one split (or ``"meta"``) of a shard folder."""
    return f"{shards.rstrip('/')}/{split}"


def _is_url(path: str) -> bool:
    return "://" in path


def read_info(shards: str) -> ShardsInfo:
    """The :class:`ShardsInfo` of a shard folder or URL.

    Raises:
        FileNotFoundError: no shards there (names the folder and how to write them).
    """
    meta = split_url(shards, META)
    if not _is_url(shards) and not os.path.isfile(os.path.join(meta, "index.json")):
        raise MissingFileError(
            f"{shards} holds no shards ({meta}/index.json does not exist); write them with "
            "`sebench prepare-shards --data-config CONFIG.yaml --out "
            f"{shards}`"
        )
    try:
        item = StreamingDataset(meta)[0]
    except (OSError, ValueError, RuntimeError) as err:
        raise MissingFileError(f"cannot read the shard description {meta}: {err}") from err
    fields = json.loads(item["json"])
    return ShardsInfo(**fields)


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} classes)"


def check_info(
    info: ShardsInfo, *, shards: str, dataset: str, classes: Sequence[str] | None
) -> None:
    """Refuse shards written for another dataset or class list, naming both.

    Args:
        info: the shards' description.
        shards: their folder or URL (for the message).
        dataset: the data module's ``dataset_name``.
        classes: the data module's class list, or None when its own files are not at hand.
    """
    if info.dataset != dataset:
        raise InputError(
            f"shards {shards} hold dataset {info.dataset!r} with classes {_listed(info.classes)}; "
            f"this data module reads {dataset!r}"
            + (f" with classes {_listed(list(classes))}" if classes is not None else "")
        )
    if classes is not None and list(classes) != list(info.classes):
        first = next(
            (i for i, (a, b) in enumerate(zip(info.classes, classes)) if a != b),
            min(len(info.classes), len(classes)),
        )
        raise InputError(
            f"shards {shards} were written for another class list: the shards' "
            f"{_listed(info.classes)}, the data module's {_listed(list(classes))}; they first "
            f"differ at label {first}"
        )


class ShardSample:
    """A shard item ``{"image", "label", "index", "name"}`` -> ``(decoded sample, label)``.

    An image that cannot be decoded is named by its shard folder, its index there and the file
    it was written from.

    Args:
        decode: ``(encoded bytes, name) -> sample``.
        shards: the split's folder or URL (for errors).
    """

    def __init__(self, decode: Callable[[Any, str], Any], shards: str) -> None:
        self.decode, self.shards = decode, shards

    def __call__(self, item: dict[str, Any]) -> tuple[Any, int]:
        name = f"{self.shards}, sample {item['index']} ({item['name']})"
        try:
            return self.decode(item["image"], name), int(item["label"])
        except (OSError, ValueError, RuntimeError) as err:
            raise InputError(f"cannot read image in shards {name}: {err}") from err


def training_stream(
    shards: str, decode: Callable[[Any, str], Any], *, seed: int
) -> StreamingDataset:
    """The training split as a shuffled ``StreamingDataset`` yielding ``(sample, label)``.

    Build it in every process after the process group is up (a data module's ``setup``): it
    reads the world size and rank then, to give each process its share.
    """
    url = split_url(shards, "train")
    return StreamingDataset(
        url, shuffle=True, seed=seed, transform=ShardSample(decode, url), batch_decode=_PER_ITEM
    )


def training_loader(
    dataset: StreamingDataset,
    *,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
) -> StreamingDataLoader:
    """``StreamingDataLoader`` of a training stream: stateful, so that Lightning saves its
    position in checkpoints and a resumed run continues mid-epoch."""
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


class ShardSamples(Dataset):
    """One split of a shard folder read by index (evaluation): ``(sample, label)`` items.

    The ``StreamingDataset`` is opened lazily in each process (DataLoader workers included), so
    the object pickles without litdata's readers.

    Args:
        shards: the shard folder or URL.
        split: ``"val"`` (or ``"train"``).
        decode: ``(encoded bytes, name) -> sample``.
        size: number of samples (from :class:`ShardsInfo`).
    """

    def __init__(self, shards: str, split: str, decode: Callable[[Any, str], Any], size: int):
        self.url = split_url(shards, split)
        self.transform = ShardSample(decode, self.url)
        self.size = size
        self._dataset: StreamingDataset | None = None

    def _open(self) -> StreamingDataset:
        if self._dataset is None:
            self._dataset = StreamingDataset(self.url, batch_decode=_PER_ITEM)
        return self._dataset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self._open()[index])

    @property
    def labels(self) -> np.ndarray:
        """Every sample's label (reads the labels only, no image is decoded)."""
        dataset = self._open()
        return np.array([int(dataset[i]["label"]) for i in range(self.size)], dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}


# ---------------------------------------------------------------------------------------------
# Writing


class _EncodedFile:
    """optimize's per-sample function: a file's bytes and label, after checking its header.

    An unreadable file does not raise in the worker (litdata then leaves the worker's helper
    processes running): it is written to ``errors_dir`` and replaced by an empty sample, and
    :func:`write_shards` reports all of them once the pass is over.

    Args:
        errors_dir: a folder for one error file per worker process.
    """

    def __init__(self, errors_dir: str) -> None:
        self.errors_dir = errors_dir

    def __call__(self, sample: tuple[str, int, int, str]) -> dict[str, Any]:
        path, label, index, name = sample
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            image_size(data)
        except (OSError, ValueError) as err:
            reason = (
                "does not exist" if isinstance(err, FileNotFoundError) else f"cannot be read: {err}"
            )
            with open(os.path.join(self.errors_dir, f"{os.getpid()}.txt"), "a") as fh:
                fh.write(f"image {path} {reason}\n")
            data, label = b"", -1
        return {"image": data, "label": int(label), "index": int(index), "name": name}


def _reported_errors(errors_dir: str) -> list[str]:
    return [line for file in sorted(os.listdir(errors_dir))
            for line in open(os.path.join(errors_dir, file)).read().splitlines()]  # fmt: skip


def _prepare_output(out: str, *, overwrite: bool) -> str | None:
    """Check a local output folder; with ``overwrite``, remove the shard folders in it."""
    if _is_url(out):
        return "overwrite" if overwrite else None
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise InputError(
                f"{out} is not empty ({', '.join(sorted(os.listdir(out))[:5])}); pass "
                "--overwrite to replace the shards in it, or choose another --out"
            )
        for split in (*SPLITS, META):
            shutil.rmtree(os.path.join(out, split), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    return None


def _optimize(inputs: list, fn: Callable, url: str, *, mode: str | None, **kwargs: Any) -> None:
    """litdata's ``optimize``, with its errors turned into ours and its output counted."""
    # Forked workers start in milliseconds (spawned ones re-import torch); they only read files.
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    try:
        optimize(fn=fn, inputs=inputs, output_dir=url, mode=mode, start_method=start, **kwargs)
    except RuntimeError as err:
        if "already contains an optimized" not in str(err):
            raise
        raise InputError(f"{url} already holds shards; pass --overwrite to replace them") from None
    written = len(StreamingDataset(url))
    if written != len(inputs):  # a worker that died at start-up is not reported by optimize
        raise RuntimeError(f"litdata wrote {written} of {len(inputs)} samples to {url}")


def _meta_item(text: str) -> dict[str, str]:
    return {"json": text}


def write_shards(
    samples: dict[str, list[tuple[str, int]]],
    out: str,
    *,
    dataset: str,
    classes: Sequence[str],
    root: str,
    overwrite: bool = False,
    num_workers: int | None = None,
    chunk_bytes: str = "64MB",
) -> ShardsInfo:
    """Write the splits' files as litdata shards (original bytes) plus their description.

    Args:
        samples: per split, ``(path, label)`` of every image, in the data module's order.
        out: output folder or URL.
        dataset: the data module's ``dataset_name``.
        classes: class names in label order.
        root: the data folder, for the stored names (paths relative to it) and the description.
        overwrite: replace shards already there.
        num_workers: writer processes (None: one per CPU core).
        chunk_bytes: target chunk size.
    """
    mode = _prepare_output(out, overwrite=overwrite)
    workers = num_workers or os.cpu_count() or 1
    for split, items in samples.items():
        indexed = [(path, label, i, os.path.relpath(path, root))
                   for i, (path, label) in enumerate(items)]  # fmt: skip
        if split == "train":
            order = np.random.default_rng(_WRITE_ORDER_SEED).permutation(len(indexed))
            indexed = [indexed[i] for i in order]
        url = split_url(out, split)
        print(f"writing {len(indexed)} {split} images to {url}")
        with tempfile.TemporaryDirectory() as errors_dir:
            _optimize(
                indexed, _EncodedFile(errors_dir), url, mode=mode,
                num_workers=min(workers, len(indexed)), chunk_bytes=chunk_bytes,
                keep_data_ordered=True, reorder_files=False,
            )  # fmt: skip
            errors = _reported_errors(errors_dir)
        if errors:
            raise InputError(
                f"{len(errors)} of the {split} images cannot be used, so the shards in {url} "
                f"are incomplete; fix or remove the files, then run again with --overwrite. "
                f"{'; '.join(errors[:5])}{' ...' if len(errors) > 5 else ''}"
            )
    info = ShardsInfo(
        dataset=dataset,
        classes=list(classes),
        sizes={split: len(items) for split, items in samples.items()},
        source=os.path.abspath(root),
    )
    text = json.dumps(dataclasses.asdict(info))
    _optimize([text], _meta_item, split_url(out, META), mode=mode, num_workers=1,
              chunk_bytes=chunk_bytes, verbose=False)  # fmt: skip
    return info


# ---------------------------------------------------------------------------------------------
# sebench prepare-shards


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``sebench prepare-shards``."""
    p = subparsers.add_parser(
        "prepare-shards",
        help="write a classification data module's splits as litdata shards",
        description=(
            "Write the training and validation splits of a classification data module (the "
            "data: section of a config, e.g. configs/places365/se_resnet152_hu2018.yaml) as "
            "litdata shards of the original image bytes, to a folder or a URL litdata writes to "
            "(s3://, gs://, ...). Train from them with --data.format shards --data.shards OUT."
        ),
    )
    p.add_argument(
        "--data-config",
        required=True,
        metavar="FILE.yaml",
        help="a config with a data: section (class_path + init_args), or that section",
    )
    p.add_argument("--data-dir", help="overrides the config's data_dir")
    p.add_argument("--out", required=True, metavar="DIR_OR_URL", help="where to write the shards")
    p.add_argument("--overwrite", action="store_true", help="replace shards already at --out")
    p.add_argument("--num-workers", type=int, help="writer processes (default: one per core)")
    p.add_argument("--chunk-bytes", default="64MB", help="target size of a shard chunk (64MB)")
    p.set_defaults(run=run_prepare_shards)  # fmt: skip


def run_prepare_shards(args: argparse.Namespace) -> int:
    """Build the data module from ``--data-config`` and write its splits as shards."""
    from tasks.analysis.loading import build_data_module

    data = build_data_module(data_config=args.data_config, data_dir=args.data_dir)
    if not hasattr(data, "source_samples"):
        raise InputError(
            f"{type(data).__name__} has no image files to shard; prepare-shards reads "
            "Places365DataModule and ImageFolderDataModule"
        )
    info = write_shards(
        {split: data.source_samples(split) for split in SPLITS},
        args.out,
        dataset=data.dataset_name,
        classes=data.class_names(),
        root=data.data_dir,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
        chunk_bytes=args.chunk_bytes,
    )
    sizes = ", ".join(f"{n} {split}" for split, n in info.sizes.items())
    print(f"wrote {sizes} images of {info.dataset} ({len(info.classes)} classes) to {args.out}")
    print(f"train from them with: --data.format shards --data.shards {args.out}")
    return 0
