"""CPU inference latency of SE models against their plain twins, measured in one process.

Paper (Sec. 3.3): SE-ResNet-50 167 ms vs ResNet-50 164 ms for a 224x224 image on a CPU, a
ratio of 1.02. Goal here: 1.03 or less.

    python -m benchmarks.cpu_inference --models se_resnet50 resnet50 --batch-size 1

The models are timed interleaved (A, B, A, B, ...) after a warm-up, so drifts of the machine
(turbo, other load) hit both alike; the figure is the median over the repeats. Ratios are
each model's median latency over the last model's (the baseline); the ratio of the minima is
printed too, as it is least disturbed by other load on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import backbones
from benchmarks._env import environment, save_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["se_resnet50", "resnet50"],
                   help="registry names; the last is the baseline (default: se_resnet50 resnet50)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (1)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input size (default: each model's native size)")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards per model (5)")
    p.add_argument("--repeats", type=int, default=30, help="timed forwards per model (30)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models, inputs = {}, {}
    for name in args.models:
        model = backbones.create_model(name).eval().to(memory_format=fmt)
        size = tuple(args.input_size or model.default_input_size)
        models[name] = model
        inputs[name] = torch.randn(args.batch_size, *size).to(memory_format=fmt)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for name, model in models.items():
                model(inputs[name])
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs[name])
                times[name].append(time.perf_counter() - start)
    baseline = args.models[-1]
    medians = {name: statistics.median(t) for name, t in times.items()}
    minima = {name: min(t) for name, t in times.items()}
    result = dict(
        benchmark="cpu_inference",
        settings=dict(batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                      channels_last=args.channels_last),
        environment=environment(),
        median_ms={name: round(m * 1e3, 2) for name, m in medians.items()},
        ratio_to_baseline={name: round(m / medians[baseline], 4) for name, m in medians.items()},
        min_ms={name: round(m * 1e3, 2) for name, m in minima.items()},
        min_ratio_to_baseline={name: round(m / minima[baseline], 4) for name, m in minima.items()},
        baseline=baseline,
    )
    print(f"{'model':<24} {'median ms':>10} {'ratio':>7} {'min ms':>8} {'ratio':>7}")
    for name in args.models:
        print(f"{name:<24} {result['median_ms'][name]:>10.2f} {result['ratio_to_baseline'][name]:>7.3f}"
              f" {result['min_ms'][name]:>8.2f} {result['min_ratio_to_baseline'][name]:>7.3f}")
    print(f"({result['environment']['cpu']}, {result['environment']['threads']} threads, "
          f"torch {result['environment']['torch']}, batch {args.batch_size})")
    save_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
