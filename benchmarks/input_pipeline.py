"""Places365 input pipelines, per worker process: torchvision's plain path against ours.

Goals (one run, same files, one worker process each, the training crop):

- large images (512-1024 px on the short side): our CPU path >= 2.5x torchvision's plain path;
- small (256 x 256) images: our CPU path >= 1.3x torchvision's plain path;
- our CPU path >= 0.85x the bare decode of the same files by the fastest decoder (the limit);
- our shard path >= our folder path;
- on a GPU: the GPU decode path >= 5,000 images/s on small images.

    python -m benchmarks.input_pipeline --out docs/results/input_pipeline_cpu.json
    python -m benchmarks.input_pipeline --device cuda --out docs/results/input_pipeline_gpu.json

Images: real photographs (matplotlib's sample of Grace Hopper, and scikit-learn's two sample
photographs where scikit-learn is installed) cut into 256 x 256 images and, for the large ones,
3 x 3 mosaics of crops at their native resolution (so that detail per pixel stays a
photograph's) cut to a short side of 512-1024 px; all re-encoded as JPEG at quality 90 into an
ImageFolder tree in a temporary folder, which also gets shards (``write_shards``).

Paths, each producing training samples from the files in one process with one torch thread (a
DataLoader worker's setting), timed in turn per repeat (round-robin) over the same shuffled files:

- ``torchvision``: ``datasets.ImageFolder`` + PIL + ``transforms.v2`` (RandomResizedCrop, flip,
  ToImage, ToDtype, Normalize): what a user would write;
- ``ours_folder``: ``ImageFolderDataModule(decode="cpu")``'s dataset (reduced-size decode; uint8
  out, normalised on the device after the transfer: that cost is reported apart);
- ``ours_shards``: the same decode reading litdata shards (``StreamingDataset``); the shards hold
  the files many times over and a pass reads a shuffled draw of them, so
- ``ours_folder_as_shards`` reads the files of each shard pass from the folder, in the same
  order: the shard goal compares the two on the same images;
- ``bare_decode``: reading each file and decoding it whole with the fastest decoder found here.

The decoders alone (reading excluded) are measured first, full size and at half size; on a GPU
the device part of the GPU path (batched decode, crop, flip, normalise) is timed on batches.
Figures are medians over repeats (min-max beside); ratios are medians of per-repeat ratios.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import simplejpeg
import torch
from litdata import StreamingDataset
from PIL import Image
from torchvision import datasets
from torchvision.io import decode_jpeg
from torchvision.transforms import v2

from backbones.errors import run_command
from benchmarks._env import environment, require_at_least_one, save_result, settings_of
from tasks.classification.data.decode import (
    CropSampler,
    Normalize,
    PILDecode,
    ReducedDecode,
    dct_scale,
    decode_rgb,
    image_size,
    render,
)
from tasks.classification.data.gpu_decode import DeviceDecoder, PlanOnly, collate_encoded
from tasks.classification.data.image_module import train_transform
from tasks.classification.data.places365 import ImageFolderDataModule
from tasks.classification.data.shards import split_url, training_stream, write_shards

SIZES = ("small", "large")
GOALS = [
    {"goal": "large images: ours / torchvision images/s", "size": "large",
     "ratio": ("ours_folder", "torchvision"), "at_least": 2.5},
    {"goal": "small images: ours / torchvision images/s", "size": "small",
     "ratio": ("ours_folder", "torchvision"), "at_least": 1.3},
    {"goal": "large images: ours / bare decode images/s", "size": "large",
     "ratio": ("ours_folder", "bare_decode"), "at_least": 0.85},
    {"goal": "small images: ours / bare decode images/s", "size": "small",
     "ratio": ("ours_folder", "bare_decode"), "at_least": 0.85},
    {"goal": "large images: shards / folder images/s", "size": "large",
     "ratio": ("ours_shards", "ours_folder_as_shards"), "at_least": 1.0},
    {"goal": "small images: shards / folder images/s", "size": "small",
     "ratio": ("ours_shards", "ours_folder_as_shards"), "at_least": 1.0},
]  # fmt: skip
GPU_GOAL = {"goal": "GPU decode path images/s, small images, one GPU", "at_least": 5000}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=48, help="images per size (48)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes per path (7)")
    p.add_argument("--train-crop", choices=["random_resized", "random"], default="random_resized")
    p.add_argument("--device", default="cpu", help="cuda: also time the GPU decode path")
    p.add_argument("--gpu-batch", type=int, default=256, help="GPU path batch size (256)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    require_at_least_one(args, "images", "repeats", "gpu_batch")
    return args


# ---------------------------------------------------------------------------------------------
# Images


def photographs() -> dict[str, np.ndarray]:
    """The real photographs installed packages ship (RGB arrays by name)."""
    files = {"grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        files.update({name: images / f"{name}.jpg" for name in ("china", "flower")})
    except ImportError:
        pass
    return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in files.items()}


def _crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int) -> np.ndarray:
    top = int(rng.integers(0, photo.shape[0] - height + 1))
    left = int(rng.integers(0, photo.shape[1] - width + 1))
    return photo[top : top + height, left : left + width]


def small_image(rng: np.random.Generator, photo: np.ndarray) -> Image.Image:
    side = int(rng.integers(160, min(photo.shape[:2]) + 1))
    return Image.fromarray(_crop(rng, photo, side, side)).resize((256, 256), Image.BILINEAR)


def large_image(rng: np.random.Generator, photos: list[np.ndarray]) -> Image.Image:
    tile_h = min(p.shape[0] for p in photos) * 3 // 4
    tile_w = min(p.shape[1] for p in photos) * 3 // 4
    tiles = [_crop(rng, photos[int(rng.integers(len(photos)))], tile_h, tile_w) for _ in range(9)]
    mosaic = np.concatenate([np.concatenate(tiles[r * 3 : r * 3 + 3], 1) for r in range(3)], 0)
    short = int(rng.integers(512, min(1024, *mosaic.shape[:2]) + 1))
    long = min(int(short * rng.uniform(1.2, 1.5)), max(mosaic.shape[:2]))
    height, width = (short, long) if rng.random() < 0.5 else (long, short)
    height, width = min(height, mosaic.shape[0]), min(width, mosaic.shape[1])
    return Image.fromarray(_crop(rng, mosaic, height, width))


def write_images(root: Path, count: int, size: str) -> None:
    """``count`` JPEGs (quality 90) in an ImageFolder tree ``root/train/<class>/``."""
    rng = np.random.default_rng(0 if size == "small" else 1)
    photos = list(photographs().values())
    for i in range(count):
        image = (
            small_image(rng, photos[i % len(photos)])
            if size == "small"
            else large_image(rng, photos)
        )
        folder = root / "train" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.jpg", quality=90)
        if i < 2:  # the data module wants the same classes in val/
            (root / "val" / folder.name).mkdir(parents=True, exist_ok=True)
            image.save(root / "val" / folder.name / f"{i:04d}.jpg", quality=90)


# ---------------------------------------------------------------------------------------------
# Timing


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def _count(outputs: Iterable[Any]) -> int:
    """Consume an iterable of samples; how many there were."""
    return sum(1 for _ in outputs)


def time_paths(paths: dict[str, Callable[[], int]], repeats: int) -> dict[str, list[float]]:
    """Images/s of each path (a callable that processes all images, returning how many), per
    repeat, the paths taken in turn with the first rotating (round-robin)."""
    for run in paths.values():  # warm-up: page cache, lazy imports, first allocations
        run()
    names = list(paths)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            count = paths[name]()
            rates[name].append(_per_second(count, time.perf_counter() - start))
    return rates


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratios(rates: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return _summary([x / y for x, y in zip(rates[a], rates[b])])


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "train").rglob("*.jpg"))


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _pil(data: bytes, scale: int = 1) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        if scale > 1:
            image.draft("RGB", (image.width // scale, image.height // scale))
        return image.convert("RGB")


def _simplejpeg(data: bytes, fraction: float = 1.0, fast: bool = False) -> np.ndarray:
    height, width = image_size(data)
    return simplejpeg.decode_jpeg(
        data,
        "RGB",
        min_height=math.ceil(height * fraction),  # libjpeg-turbo's smallest scale this large
        min_width=math.ceil(width * fraction),
        fastdct=fast,
        fastupsample=fast,
    )


def _torchvision(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


FULL_DECODERS = {"pil": _pil, "simplejpeg": _simplejpeg, "torchvision.io": _torchvision}
HALF_DECODERS = {"pil_draft_half": functools.partial(_pil, scale=2),
                 "simplejpeg_half": functools.partial(_simplejpeg, fraction=0.5)}  # fmt: skip
# What else libjpeg-turbo offers, measured to show why the CPU path does not use it: the other
# M/8 scales (3/4 here; libjpeg-turbo has no vectorised IDCT for them) and the fast, less
# accurate IDCT and chroma upsampling (other pixels than PIL's).
OTHER_DECODERS = {"simplejpeg_3_4": functools.partial(_simplejpeg, fraction=0.75),
                  "simplejpeg_fast": functools.partial(_simplejpeg, fast=True)}  # fmt: skip


def measure_decoders(files: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """Bare decoders on bytes in memory: full size, the scaled decodes at half size, and the
    alternatives the CPU path does not take (``OTHER_DECODERS``)."""
    blobs = [_read(f) for f in files]
    decoders = {**FULL_DECODERS, **HALF_DECODERS, **OTHER_DECODERS}
    paths = {name: (lambda d=d: _count(map(d, blobs))) for name, d in decoders.items()}
    return {name: _summary(v) for name, v in time_paths(paths, repeats).items()}


def pipelines(
    root: Path, shards: Path, train_crop: str, fastest: Callable[[bytes], Any]
) -> dict[str, Callable[[], int]]:
    """The paths of the module docstring, each a callable over all images once."""
    files = _files(root)
    order = np.random.default_rng(0).permutation(len(files))
    plain = datasets.ImageFolder(
        str(root / "train"),
        transform=train_transform(train_crop=train_crop, crop_size=224, resize_size=256),
    )
    ours = ImageFolderDataModule(str(root), train_crop=train_crop, num_workers=0)
    ours.setup("fit")
    # The shards hold the files many times over, so that all passes read one long epoch, as a
    # worker does in an epoch of millions of images (an epoch's start costs a few ms).
    stream = iter(training_stream(str(shards), ours.decoder(train=True), seed=0))
    position = {path: i for i, (path, _) in enumerate(ours.train_set.samples)}
    shard_passes = _shard_passes(shards, root, len(files))

    def over(dataset: Any, indices: Iterable[int]) -> int:
        return _count(dataset[int(i)] for i in indices)

    return {
        "torchvision": lambda: over(plain, order),
        "ours_folder": lambda: over(ours.train_set, order),
        "ours_shards": lambda: _count(next(stream) for _ in order),
        "ours_folder_as_shards": lambda: over(
            ours.train_set, [position[path] for path in next(shard_passes)]
        ),
        "bare_decode": lambda: _count(fastest(_read(files[int(i)])) for i in order),
    }


def _shard_passes(shards: Path, root: Path, count: int) -> Iterator[list[str]]:
    """The files that successive passes of ``count`` samples of the shard stream read, in its
    order (the same shards, seed and process: the same shuffle); ``root`` is the folder the
    shards were written from (their names are relative to it)."""
    stream = iter(StreamingDataset(split_url(str(shards), "train"), shuffle=True, seed=0))
    while True:
        yield [str(root / next(stream)["name"]) for _ in range(count)]


def where_time_goes(files: list[str], train_crop: str) -> dict[str, float]:
    """Milliseconds per image of our CPU path's steps (one pass, after the timed ones)."""
    sampler = CropSampler(train=True, train_crop=train_crop, crop_size=224, resize_size=256)
    totals = dict.fromkeys(("read", "header_and_plan", "decode", "crop_resize_flip"), 0.0)
    scaled = 0
    for path in files:
        t0 = time.perf_counter()
        data = _read(path)
        t1 = time.perf_counter()
        height, width = image_size(data)
        plan = sampler(height, width)
        scale = dct_scale(plan, height, width)
        t2 = time.perf_counter()
        pixels = torch.from_numpy(decode_rgb(data, scale=scale))
        t3 = time.perf_counter()
        render(pixels.permute(2, 0, 1), plan, scale=scale)
        t4 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += seconds
        scaled += scale > 1
    batch = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
    start = time.perf_counter()
    Normalize()(batch)
    normalise = (time.perf_counter() - start) / len(batch)
    result = {key: 1e3 * value / len(files) for key, value in totals.items()}
    return {
        **result,
        "normalise_batch_on_cpu": 1e3 * normalise,
        "share_decoded_scaled": scaled / len(files),
    }


def fidelity(files: list[str], train_crop: str) -> dict[str, float]:
    """Our crops against torchvision's plain path, same seed (so the same box and flip), as
    uint8 images before normalisation: grey levels and PSNR."""
    ours = ReducedDecode(
        CropSampler(train=True, train_crop=train_crop, crop_size=224, resize_size=256)
    )
    full = train_transform(train_crop=train_crop, crop_size=224, resize_size=256)
    plain = PILDecode(v2.Compose(full.transforms[:-2]))  # up to the uint8 image
    differences, psnrs = [], []
    for seed, path in enumerate(files):
        data = _read(path)
        torch.manual_seed(seed)
        a = ours(data).float()
        torch.manual_seed(seed)
        b = plain(data).float()
        differences.append(float((a - b).abs().mean()))
        psnrs.append(10 * math.log10(255**2 / max(float(((a - b) ** 2).mean()), 1e-12)))
    return {"mean_abs_diff": statistics.mean(differences),
            "worst_image_mean_abs_diff": max(differences), "min_psnr_db": min(psnrs)}  # fmt: skip


def measure_gpu(
    root: Path, device: torch.device, *, train_crop: str, batch_size: int, repeats: int
) -> dict[str, float]:
    """Images/s of the GPU path's device part (decode, crop, flip, normalise) on ``device``:
    one batch of the files (repeated to ``batch_size``), planned as a worker would."""
    plan = PlanOnly(CropSampler(train=True, train_crop=train_crop, crop_size=224, resize_size=256))
    blobs = [_read(f) for f in _files(root)]
    batch = collate_encoded([(plan(blobs[i % len(blobs)]), 0) for i in range(batch_size)])
    decoder = DeviceDecoder()

    def run() -> int:
        decoder(batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return batch_size

    return _summary(time_paths({"gpu": run}, repeats)["gpu"])


# ---------------------------------------------------------------------------------------------
# Goals and report


def evaluate_goals(result: dict) -> list[dict]:
    rows = []
    for goal in GOALS:
        value = result["sizes"][goal["size"]]["ratios"]["/".join(goal["ratio"])]["median"]
        met = value >= goal["at_least"]
        rows.append({"goal": goal["goal"], "target": f">= {goal['at_least']}",
                     "status": "met" if met else "not met", "value": round(value, 3)})  # fmt: skip
    gpu = result.get("gpu")
    row = {"goal": GPU_GOAL["goal"], "target": f">= {GPU_GOAL['at_least']}"}
    if gpu is None:
        row.update(status="not measured", why="no CUDA device in this run")
    else:
        value = gpu["images_per_s"]["median"]
        row.update(status="met" if value >= GPU_GOAL["at_least"] else "not met", value=value)
    return rows + [row]


def to_markdown(result: dict) -> str:
    env, s = result["environment"], result["settings"]
    lines = [f"{env.get('gpu', env['cpu'])}, torch {env['torch']}, one process with one torch "
             f"thread, crop {s['train_crop']}, {s['images']} images per size, {s['repeats']} "
             f"repeats; commit {env['git_commit']}, {env['date']}.", "",
             "| images | path | images/s median (min-max) |", "|---|---|---|"]  # fmt: skip
    for size in SIZES:
        for path, r in result["sizes"][size]["images_per_s"].items():
            lines.append(
                f"| {size} | {path} | {r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) |"
            )
    lines += ["", "| goal | target | status | measured |", "|---|---|---|---|"]
    for g in result["goals"]:
        lines.append(
            f"| {g['goal']} | {g['target']} | {g['status']} | {g.get('value', g.get('why', ''))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    result: dict[str, Any] = {"benchmark": "input_pipeline", "environment": environment(),
                              "settings": settings_of(args),
                              "photographs": sorted(photographs()), "sizes": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmp:
        for size in SIZES:
            root, shards = Path(tmp) / size, Path(tmp) / f"{size}_shards"
            write_images(root, args.images, size)
            files = _files(root)
            copies = [(f, 0) for f in files] * (args.repeats + 2)  # warm-up, repeats, spare
            write_shards({"train": copies, "val": [(files[0], 0)]}, str(shards),
                         dataset="imagefolder", classes=["class_0", "class_1"], root=str(root),
                         num_workers=1)  # fmt: skip
            decoders = measure_decoders(files, args.repeats)
            fastest_name = max(FULL_DECODERS, key=lambda name: decoders[name]["median"])
            fastest = FULL_DECODERS[fastest_name]
            rates = time_paths(pipelines(root, shards, args.train_crop, fastest), args.repeats)
            sizes = [image_size(_read(f)) for f in files]
            result["sizes"][size] = {
                "pixels_median": statistics.median(h * w for h, w in sizes),
                "short_side_range": [min(min(s) for s in sizes), max(min(s) for s in sizes)],
                "mean_file_kb": statistics.mean(os.path.getsize(f) for f in files) / 1024,
                "decoders_images_per_s": decoders,
                "fastest_decoder": fastest_name,
                "images_per_s": {name: _summary(v) for name, v in rates.items()},
                "ratios": {f"{a}/{b}": _ratios(rates, a, b) for a, b in
                           [("ours_folder", "torchvision"), ("ours_folder", "bare_decode"),
                            ("ours_shards", "ours_folder_as_shards")]},
                "ours_ms_per_image": where_time_goes(files, args.train_crop),
                "ours_against_torchvision": fidelity(files, args.train_crop),
            }  # fmt: skip
            if size == "small" and torch.device(args.device).type == "cuda":
                result["gpu"] = {"images_per_s": measure_gpu(
                    root, torch.device(args.device), train_crop=args.train_crop,
                    batch_size=args.gpu_batch, repeats=args.repeats)}  # fmt: skip
    result["goals"] = evaluate_goals(result)
    print(to_markdown(result))
    save_result(result, args.out)
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.input_pipeline``: exit code 2 and one line on bad input."""
    return run_command("input_pipeline", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
