"""CIFAR input paths against model training throughput, measured in one process.

Goals on a GPU (bf16): the GPU-resident input path delivers at least 1.2x the images/s that
``se_preact_resnet110`` trains at, and ``se_preact_resnet110`` trains at 0.85x or more of
``preact_resnet110``'s images/s.

    python -m benchmarks.cifar_throughput --device cuda --precision bf16 --channels-last

Input paths are timed alone (batches produced and moved to the device, nothing trained): the
DataLoader path (torchvision dataset, transforms in worker processes) and the GPU-resident
path (uint8 dataset on the device, batched crop/flip/Cutout there). Models are timed on one
fixed batch (SGD step: forward, backward, update), interleaved, after a warm-up; CUDA events
on a GPU. Data is synthetic (CIFAR-shaped, generated) (the images do not change the speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import backbones
from backbones.errors import run_command
from benchmarks._env import describe, environment, save_result, settings_of
from tasks.classification.data.cifar import (
    MEAN,
    NUM_CLASSES,
    STD,
    GPUResidentLoader,
    SyntheticCIFAR,
    train_transform,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["se_preact_resnet110", "preact_resnet110"],
                   help="registry names; the last is the baseline")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--channels-last", action="store_true", help="NHWC models and batches")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (128)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and path (30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (4)")
    p.add_argument("--cutout", type=int, default=0, help="Cutout size on both paths (0)")
    p.add_argument("--dataset", choices=sorted(NUM_CLASSES), default="cifar10")
    p.add_argument("--num-images", type=int, default=10000, help="synthetic images (10000)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_s(batches, steps: int, warmup: int, device: torch.device, batch_size: int) -> float:
    """Pull ``warmup + steps`` batches to ``device``; images/s over the timed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)[0].to(device, non_blocking=True)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)[0].to(device, non_blocking=True)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _cycle(loader):
    while True:
        yield from loader


def measure_input_paths(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    dataset = SyntheticCIFAR(args.num_images, NUM_CLASSES[args.dataset], seed=0, train=True,
                             transform=train_transform(args.dataset, args.cutout))
    data, targets = dataset.data, torch.as_tensor(dataset.targets)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0)
    resident = GPUResidentLoader(
        torch.from_numpy(data).to(device), targets.to(device),
        batch_size=args.batch_size, mean=MEAN[args.dataset], std=STD[args.dataset], train=True,
        cutout=args.cutout,
        memory_format=torch.channels_last if args.channels_last else torch.contiguous_format,
    )
    n = args.steps
    return {
        "dataloader": _images_per_s(_cycle(loader), n, args.warmup, device, args.batch_size),
        "gpu_resident": _images_per_s(_cycle(resident), n, args.warmup, device, args.batch_size),
    }


def measure_models(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, NUM_CLASSES[args.dataset], (args.batch_size,), device=device)
    steps = {}
    for name in args.models:
        model = backbones.create_model(name, num_classes=NUM_CLASSES[args.dataset])
        model = model.to(device, memory_format=fmt).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

        def step(model=model, optimizer=optimizer, scaler=scaler) -> None:
            autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                        else nullcontext())
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        steps[name] = step
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: args.batch_size / statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment()  # the code as it is when the run starts
    device = torch.device(args.device)
    torch.manual_seed(0)
    inputs = measure_input_paths(args, device)
    models = measure_models(args, device)
    subject, baseline = args.models[0], args.models[-1]
    result = dict(
        benchmark="cifar_throughput",
        settings=settings_of(args),
        environment=env,
        input_images_per_s={k: round(v, 1) for k, v in inputs.items()},
        train_images_per_s={k: round(v, 1) for k, v in models.items()},
        gpu_resident_over_model=round(inputs["gpu_resident"] / models[subject], 3),
        dataloader_over_model=round(inputs["dataloader"] / models[subject], 3),
        se_over_plain=round(models[subject] / models[baseline], 3),
    )
    print(f"{'input path':<24} {'images/s':>10}")
    for name, value in result["input_images_per_s"].items():
        print(f"{name:<24} {value:>10.0f}")
    print(f"{'model (train step)':<24} {'images/s':>10}")
    for name, value in result["train_images_per_s"].items():
        print(f"{name:<24} {value:>10.0f}")
    print(f"gpu_resident / {subject}: {result['gpu_resident_over_model']:.2f} (goal >= 1.2 on a GPU)")
    print(f"dataloader / {subject}: {result['dataloader_over_model']:.2f}")
    print(f"{subject} / {baseline}: {result['se_over_plain']:.3f} (goal >= 0.85)")
    print(f"({args.precision}, batch {args.batch_size}, channels_last={args.channels_last}; "
          f"{describe(result['environment'])})")
    save_result(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(run_command("cifar_throughput", main))
