"""Seconds per training iteration of Faster R-CNN FPN with an SE trunk against its plain twin.

The project's goal: ``se_resnet50`` / ``resnet50`` seconds per iteration <= 1.10 on a GPU.

    python -m benchmarks.detection_speed --engine detectron2 --device cuda --precision bf16
    python -m benchmarks.detection_speed --engine torchvision --device cpu --image-size 320 \\
        --batch-size 1 --iters 2 --repeats 5

Both detectors are built from the project's own code (detectron2: ``configs/coco/
Base-SEBench-FPN.yaml`` with ``MODEL.SEBENCH.NAME``; torchvision: ``build_faster_rcnn``), get the
same fixed batch of random images with a few random boxes each, and train (forward, losses,
backward, SGD step) interleaved in one process: ``--warmup`` untimed iterations each, then
``--repeats`` rounds of ``--iters`` timed iterations per model, the starting model rotating. The
ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backbones.errors import run_command
from benchmarks._env import describe, environment, require_at_least_one, save_result, settings_of
from benchmarks.throughput import (
    PRECISIONS,
    _autocast,
    _device,
    _rotated,
    check_autocast,
    time_calls,
)

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.10
NUM_CLASSES = 80


def _random_targets(
    batch: int, size: int, boxes: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(image in [0, 255], boxes x1y1x2y2, labels 1..NUM_CLASSES) per image."""
    samples = []
    for _ in range(batch):
        image = torch.rand(3, size, size, generator=generator) * 255
        xy = torch.rand(boxes, 2, generator=generator) * size * 0.6
        wh = torch.rand(boxes, 2, generator=generator) * size * 0.3 + 16
        labels = torch.randint(1, NUM_CLASSES + 1, (boxes,), generator=generator)
        samples.append((image, torch.cat([xy, (xy + wh).clamp(max=size)], 1), labels))
    return samples


def torchvision_step(
    trunk: str, samples: list, device: torch.device, dtype: torch.dtype | None
) -> Callable[[], None]:
    from tasks.detection.torchvision_model import build_faster_rcnn

    size = samples[0][0].shape[-1]
    model = build_faster_rcnn(trunk, NUM_CLASSES, min_size=size, max_size=size).to(device).train()
    images = [image.to(device) / 255 for image, _, _ in samples]
    targets = [{"boxes": b.to(device), "labels": c.to(device)} for _, b, c in samples]
    return _sgd_step(model, lambda: model(images, targets), device, dtype)


def detectron2_step(
    trunk: str, samples: list, device: torch.device, dtype: torch.dtype | None
) -> Callable[[], None]:
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from tasks.detection.d2.config import add_sebench_config

    cfg = get_cfg()
    add_sebench_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "coco" / "Base-SEBench-FPN.yaml"))
    size = samples[0][0].shape[-1]
    cfg.merge_from_list(["MODEL.SEBENCH.NAME", trunk, "MODEL.DEVICE", device.type,
                         "INPUT.MIN_SIZE_TRAIN", (size,), "INPUT.MAX_SIZE_TRAIN", size])
    model = build_model(cfg).to(device).train()
    inputs = []
    for image, boxes, labels in samples:
        instances = Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=labels - 1)
        inputs.append({"image": image.to(device), "instances": instances.to(device),
                       "height": size, "width": size})
    # detectron2's training forward logs to an event storage, as inside its trainers.
    storage = EventStorage()

    def losses() -> dict:
        with storage:
            return model(inputs)

    return _sgd_step(model, losses, device, dtype)


def _tame_residual_branches(model: torch.nn.Module) -> None:
    """Scale the last BN of every bottleneck branch by 0.2 (its frozen statistics stay).

    A randomly initialised trunk under frozen BN (detectron2's default for ImageNet trunks) has
    no normalisation at all: each block adds a branch as large as its input, activations grow
    ~2x per block and the losses overflow within a few steps. Non-finite values take the CPU's
    slow paths, so the timing would measure overflow, not the model (plain ResNet-50 then runs up
    to 8x slower than SE-ResNet-50, whose gates damp the branches). Pretrained weights, the real
    use, keep activations in range; this does the same at no change to the work done.
    """
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "bn3") and hasattr(module.bn3, "weight"):
                module.bn3.weight.mul_(0.2)


def _sgd_step(
    model: torch.nn.Module, losses: Callable[[], dict], device: torch.device,
    dtype: torch.dtype | None,
) -> Callable[[], None]:
    _tame_residual_branches(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # A small rate: random boxes on random weights must not diverge over the run.
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with _autocast(device, dtype):
            loss = sum(value.float() for value in losses().values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"the training loss became {loss.item()}; timings would be void")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


ENGINES = {"detectron2": detectron2_step, "torchvision": torchvision_step}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=sorted(ENGINES), default="detectron2",
                   help="detector implementation (default: detectron2)")
    p.add_argument("--trunks", nargs=2, default=["se_resnet50", "resnet50"],
                   metavar=("SE", "PLAIN"), help="SE trunk and its baseline")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--batch-size", type=int, default=2, help="images per iteration (2)")
    p.add_argument("--image-size", type=int, default=800, help="square image side (800)")
    p.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image (8)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per model (5)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per round (10)")
    p.add_argument("--repeats", type=int, default=5, help="rounds (5)")
    p.add_argument("--out", type=Path, help="write the result as JSON")
    args = p.parse_args(argv)
    require_at_least_one(args, "batch_size", "image_size", "boxes", "iters", "repeats")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment()  # the code as it is when the run starts
    device = _device(args.device)
    check_autocast(device, args.precision)
    dtype = PRECISIONS[args.precision]
    generator = torch.Generator().manual_seed(0)
    samples = _random_targets(args.batch_size, args.image_size, args.boxes, generator)
    steps = {}
    for trunk in args.trunks:
        torch.manual_seed(0)
        steps[trunk] = ENGINES[args.engine](trunk, samples, device, dtype)
        time_calls(steps[trunk], args.warmup, device)
    seconds: dict[str, list[float]] = {trunk: [] for trunk in args.trunks}
    for repeat in range(args.repeats):
        for trunk in _rotated(list(args.trunks), repeat):
            seconds[trunk].append(time_calls(steps[trunk], args.iters, device) / args.iters)
        print(f"round {repeat + 1}/{args.repeats}: "
              + ", ".join(f"{t} {s[-1]:.3f} s/iter" for t, s in seconds.items()), flush=True)
    se, plain = args.trunks
    ratios = [a / b for a, b in zip(seconds[se], seconds[plain])]
    result = {
        "settings": settings_of(args),
        "environment": env,
        "seconds_per_iter": {t: round(statistics.median(s), 4) for t, s in seconds.items()},
        "ratio": round(statistics.median(ratios), 4),
        "ratio_min_max": [round(min(ratios), 4), round(max(ratios), 4)],
        "goal": f"<= {GOAL} on a GPU",
        "goal_status": ("not measured (not a GPU run)" if device.type != "cuda"
                        else "met" if statistics.median(ratios) <= GOAL else "not met"),
    }
    print(f"| engine | device | precision | {se} s/iter | {plain} s/iter | ratio | goal |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {args.engine} | {result['environment'].get('gpu', result['environment']['cpu'])} "
          f"| {args.precision} | {result['seconds_per_iter'][se]:.3f} "
          f"| {result['seconds_per_iter'][plain]:.3f} | **{result['ratio']:.3f}** "
          f"| {GOAL}: {result['goal_status']} |\n({describe(result['environment'])})")
    save_result(result, args.out)
    return result


if __name__ == "__main__":
    start = time.perf_counter()
    status = run_command("detection_speed", main)
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(status)
