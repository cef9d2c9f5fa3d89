"""Training and inference throughput of SE models against their plain twins and timm's models.

The project's speed goals, evaluated at the end of every run (a goal whose settings differ from
the run's is reported "not measured"):

- ``se_resnet50`` trains at >= 0.90x ``resnet50``'s images/s (GPU, bf16, channels_last, compiled);
- ``se_resnet50`` trains at >= 1.0x (stretch 1.1) timm's ``seresnet50``, same stride convention
  (``se_resnet50[stride_in_1x1=False]``), same settings;
- ``se_preact_resnet110`` trains at >= 0.85x ``preact_resnet110`` (GPU, bf16);
- model FLOP utilisation of ``se_resnet50`` training >= 25% (GPU, bf16);
- CPU inference, batch 1, fp32: ``se_resnet50`` time / ``resnet50`` time <= 1.03.

    python -m benchmarks.throughput --models se_resnet50 resnet50 timm:seresnet50 \\
        --mode train --precision bf16 --channels-last --compile --device cuda
    python -m benchmarks.throughput --suite paper --mode train --precision bf16 \\
        --channels-last --compile --device cuda --out docs/results/throughput_gpu.json
    OMP_NUM_THREADS=2 python -m benchmarks.throughput --models se_resnet50 resnet50 \\
        --mode infer --batch-size 1 --device cpu --repeats 30

Model names: registry names, ``timm:NAME`` (built by timm, random weights) and keywords in
brackets, ``'se_resnet50[stride_in_1x1=False]'`` (quote them in a shell; values are Python
literals). Method: every model is built, counted (MACs per image), moved to the device and
optionally compiled; all get ``--warmup`` untimed steps; then each repeat times ``--steps`` steps
of every model in turn (round-robin, the starting model rotating per repeat) so that drifts of
the machine hit all alike. Figures are the median images/s over repeats (min and max beside);
a ratio between two models is the median of the per-repeat ratios. CUDA events time the GPU,
``perf_counter`` the CPU. A train step is forward, cross-entropy, backward and an SGD update
(``zero_grad(set_to_none=True)``, GradScaler for fp16); an inference step is a forward under
``inference_mode``. MFU = (6 in training, 2 in inference) x MACs x images/s over the peak of a
square matmul measured in the same run, before and after the models (the higher counts; bf16 on
a GPU, fp16 for fp16 runs; on a CPU the autocast dtype, fp32 without autocast). MACs per image
follow ``backbones.model_complexity`` for our models and timm's alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones.errors import InputError, run_command
from backbones.weights.resnet import check_timm_conventions
from benchmarks._env import environment, require_at_least_one, save_result, settings_of
from benchmarks._goals import evaluate_goals, to_markdown
from benchmarks._specs import (
    PLAIN_BASELINES,
    SUITES,
    TIMM_TWINS,
    ModelSpec,
    build_model,
    check_spec,
    count_macs,
    native_input_size,
    parse_spec,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# ---------------------------------------------------------------------------------------------
# Steps and timing


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def check_autocast(device: torch.device, precision: str) -> None:
    """Fail early, with the way out, where this device's autocast cannot run ``precision``."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return
    conv = nn.Conv2d(3, 4, 3).to(device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _autocast(device, dtype):
                out = conv(torch.randn(1, 3, 8, 8, device=device))
    except RuntimeError as err:
        raise InputError(
            f"--precision {precision} is not supported by torch {torch.__version__}'s autocast on "
            f"{device.type} ({str(err).splitlines()[0]}); use --precision fp32 or bf16"
        ) from None
    if out.dtype != dtype:
        said = "; ".join(str(w.message) for w in caught)
        raise InputError(
            f"--precision {precision}: torch {torch.__version__}'s autocast on {device.type} "
            f"does not cast to {dtype} ({said or 'no cast happened'}); use --precision fp32 or bf16"
        )


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, train: bool,
              dtype: torch.dtype | None) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, SGD) or one inference forward.

    Args:
        model (nn.Module): on the device, in train or eval mode already; may be compiled.
        x (torch.Tensor): the batch, fixed for the run (its layout is the model's).
        y (torch.Tensor): class labels of the batch.
        train (bool): a training step; else a forward under ``inference_mode``.
        dtype (torch.dtype | None): autocast dtype (None: no autocast). fp16 training scales the
            loss with a GradScaler.
    """
    device = x.device
    if not train:
        def infer() -> None:
            with torch.inference_mode(), _autocast(device, dtype):
                model(x)
        return infer
    # A small learning rate: random labels on random weights must not diverge to NaN over the
    # run (non-finite values can change the speed of CPU kernels).
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def train_step() -> None:
        with _autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds that ``calls`` calls of ``fn`` take on ``device`` (CUDA events on a GPU)."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start_s


def peak_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype of the peak MFU is taken against: bf16 on a GPU (fp16 runs: fp16); on a CPU
    the autocast dtype, fp32 without autocast."""
    dtype = PRECISIONS[precision]
    if device.type == "cuda":
        return dtype if dtype is not None else torch.bfloat16
    return dtype or torch.float32


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None) -> dict:
    """Best FLOP/s of a square matmul over several timed rounds (the best resists other load).

    Args:
        device (torch.device): where to multiply.
        dtype (torch.dtype): of both operands and the result.
        size (int | None): side of the matrices (None: 8192 on a GPU, 2048 on a CPU).

    Returns:
        ``{"tflops": float, "dtype": str, "size": int}``.
    """
    n = size or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    calls = 20 if device.type == "cuda" else 2

    def matmul() -> None:
        torch.mm(a, b, out=out)

    time_calls(matmul, calls, device)  # warm-up
    best = max(calls * 2 * n**3 / time_calls(matmul, calls, device) for _ in range(10))
    return {"tflops": round(best / 1e12, 4), "dtype": str(dtype).replace("torch.", ""), "size": n}


# ---------------------------------------------------------------------------------------------
# One group of models, interleaved


@dataclasses.dataclass
class Bench:
    spec: ModelSpec
    raw: nn.Module  # uncompiled, on the device (conventions are read from it)
    step: Callable[[], None]
    input_size: tuple[int, int, int]
    macs: int
    params: int


def prepare(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> Bench:
    model = build_model(spec)
    input_size = (3, args.input_size, args.input_size) if args.input_size else (
        native_input_size(spec, model))
    macs, params = count_macs(model, input_size)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train(args.mode == "train")
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise InputError(f"{spec.label} has no classifier (num_classes=0); nothing to train on")
    x = torch.randn(args.batch_size, *input_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)
    runnable = torch.compile(model) if args.compile else model
    step = make_step(runnable, x, y, train=args.mode == "train", dtype=PRECISIONS[args.precision])
    return Bench(spec, model, step, input_size, macs, params)


def _rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure_group(benches: list[Bench], args: argparse.Namespace, device: torch.device
                  ) -> dict[str, list[float]]:
    """images/s of every model in every repeat, the models interleaved."""
    for bench in benches:
        start = time.perf_counter()
        time_calls(bench.step, args.warmup, device)
        print(f"  warm-up {bench.spec.label}: {time.perf_counter() - start:.1f} s", flush=True)
    images = args.steps * args.batch_size
    rates: dict[str, list[float]] = {b.spec.label: [] for b in benches}
    for repeat in range(args.repeats):
        for bench in _rotated(benches, repeat):
            rates[bench.spec.label].append(images / time_calls(bench.step, args.steps, device))
        shown = " | ".join(f"{label} {r[-1]:.1f}" for label, r in rates.items())
        print(f"  repeat {repeat + 1}/{args.repeats} (images/s): {shown}", flush=True)
    return rates


# ---------------------------------------------------------------------------------------------
# Pairs and statistics


def _summary(values: list[float], digits: int) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}


def _plain_baseline(spec: ModelSpec) -> ModelSpec | None:
    """The plain twin of an SE model: se_X -> X (timm: seX -> X), keywords without se_*."""
    if spec.timm:
        name = spec.name[2:] if spec.name.startswith("se") else None
    else:
        name = PLAIN_BASELINES.get(spec.name) or (
            spec.name[3:] if spec.name.startswith("se_") else None)
    if name is None:
        return None
    kwargs = tuple((k, v) for k, v in spec.kwargs if not k.startswith("se_") and k != "se")
    return ModelSpec(name, kwargs, timm=spec.timm)


def _conventions(ours: nn.Module, theirs: nn.Module) -> str:
    """"same", "differ: ..." (stride or stem pool placed differently) or "unchecked" (not two
    ResNet-style models with a strided bottleneck in ``layer2``)."""
    if not all(hasattr(getattr(m, "layer2", [None])[0], "conv1") for m in (ours, theirs)):
        return "unchecked"
    try:
        check_timm_conventions(ours, theirs)
    except InputError as err:
        return f"differ: {err}"
    return "same"


def find_pairs(benches: list[Bench]) -> list[dict]:
    """Every (subject, baseline) comparison the group allows: SE over plain, ours over timm."""
    labels = {b.spec.label for b in benches}
    pairs = []
    for bench in benches:
        baseline = _plain_baseline(bench.spec)
        if baseline is not None and baseline.label in labels:
            kind = "timm_se_over_plain" if bench.spec.timm else "se_over_plain"
            pairs.append({"subject": bench.spec.label, "baseline": baseline.label, "kind": kind})
    for ours in (b for b in benches if not b.spec.timm):
        for theirs in (b for b in benches if b.spec.timm):
            if TIMM_TWINS.get(theirs.spec.name) == ours.spec.name:
                pairs.append({"subject": ours.spec.label, "baseline": theirs.spec.label,
                                  "kind": "ours_over_timm",
                                  "conventions": _conventions(ours.raw, theirs.raw)})
    return pairs


def pair_stats(pair: dict, rates: dict[str, list[float]]) -> dict:
    """Per-repeat paired ratios: throughput (subject/baseline) and time (its inverse)."""
    subject, baseline = rates[pair["subject"]], rates[pair["baseline"]]
    throughput = [s / b for s, b in zip(subject, baseline)]
    return dict(pair, throughput_ratio=_summary(throughput, 4),
                time_ratio=_summary([1 / r for r in throughput], 4))


def model_stats(bench: Bench, rates: list[float], args: argparse.Namespace) -> dict:
    """Speed of one model (its MFU is added once the matmul peak is known)."""
    median = statistics.median(rates)
    return {
        "input_size": list(bench.input_size),
        "params": bench.params,
        "macs": bench.macs,
        "gmacs": round(bench.macs / 1e9, 4),
        "images_per_s": _summary(rates, 2),
        "images_per_s_repeats": [round(r, 2) for r in rates],
        "ms_per_batch": round(1e3 * args.batch_size / median, 3),
    }


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="model specs, measured interleaved "
                   "(default: se_resnet50 resnet50)")
    p.add_argument("--suite", choices=sorted(SUITES), help="a list of model groups (see SUITES)")
    p.add_argument("--group", nargs="+", help="with --suite: only these groups (by SE model)")
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile each model first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int,
                   help="images per step (default: 128 on a GPU; CPU 8 train, 1 infer)")
    p.add_argument("--input-size", type=int, help="square input side (default: each model's)")
    p.add_argument("--warmup", type=int, help="untimed steps per model (default: GPU 10, CPU 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (10)")
    p.add_argument("--steps", type=int, help="steps per model per repeat (GPU 20, CPU 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--peak-size", type=int,
                   help="side of the square matmul that measures the peak (GPU 8192, CPU 2048)")
    p.add_argument("--out", type=Path, help="write the JSON result here (after every group)")
    p.add_argument("--md", type=Path, help="write the markdown tables here")
    args = p.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    if args.batch_size is None:
        args.batch_size = 128 if on_gpu else (8 if args.mode == "train" else 1)
    if args.warmup is None:
        args.warmup = 10 if on_gpu else 2
    if args.steps is None:
        args.steps = 20 if on_gpu else 1
    return args


def model_groups(args: argparse.Namespace) -> list[list[ModelSpec]]:
    """The groups to run, each a list of checked specs."""
    if args.suite and args.models:
        raise InputError("give --models or --suite, not both")
    if args.group and not args.suite:
        raise InputError("--group selects groups of a --suite; give --suite too")
    if args.suite:
        suite = SUITES[args.suite]
        unknown = [g for g in args.group or [] if g not in suite]
        if unknown:
            raise InputError(f"unknown group(s) {unknown} of suite {args.suite!r}; "
                             f"expected some of {list(suite)}")
        texts = [suite[g] for g in (args.group or suite)]
    else:
        texts = [args.models or ["se_resnet50", "resnet50"]]
    groups = [[parse_spec(t) for t in group] for group in texts]
    for group in groups:
        labels = [s.label for s in group]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise InputError(f"model(s) given twice: {duplicates}")
        for spec in group:
            check_spec(spec)
    return groups


def _check_numbers(args: argparse.Namespace) -> None:
    require_at_least_one(args, "batch_size", "repeats", "steps")
    if args.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.peak_size is not None and args.peak_size < 1:
        raise InputError(f"--peak-size must be at least 1, got {args.peak_size}")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"bad --device {name!r}; expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"bad --device {name!r}; expected cpu or cuda")
    return device


def _reset_compiler() -> None:
    # Each group compiles fresh models of the same classes: clear the caches between groups, and
    # allow more than the default 8 compiled variants of one forward (else dynamo falls back to
    # eager without an error and the figure would silently be eager's).
    torch._dynamo.reset()
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(64, getattr(torch._dynamo.config, key)))


def _finish(result: dict, args: argparse.Namespace) -> None:
    flops_per_mac = 6 if args.mode == "train" else 2  # forward 2; backward twice the forward
    for stats in result["models"].values():
        stats["mfu"] = round(flops_per_mac * stats["macs"] * stats["images_per_s"]["median"]
                             / (result["peak"]["tflops"] * 1e12), 4)
    result["goals"] = evaluate_goals(result)
    result["markdown"] = to_markdown(result)
    save_result(result, args.out)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(result["markdown"])


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark, print progress and the tables, write ``--out`` / ``--md``.

    Args:
        argv (Sequence[str] | None): command-line arguments (None: ``sys.argv``).

    Returns:
        The result: ``settings``, ``environment``, ``peak``, ``groups`` (labels per group),
        ``models`` (label -> images/s median/min/max, per-repeat figures, MACs, MFU),
        ``pairs`` ("subject / baseline" -> kind, throughput and time ratios, conventions),
        ``goals`` and ``markdown``.

    Raises:
        ValueError: on bad input (unknown model or keyword, bad spec, unsupported precision,
            no CUDA); ``cli`` turns it into one line and exit code 2.
    """
    args = parse_args(argv)
    _check_numbers(args)
    device = _device(args.device)
    groups = model_groups(args)
    check_autocast(device, args.precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    peak = measure_matmul_peak(device, peak_dtype(device, args.precision), args.peak_size)
    print(f"matmul peak: {peak['tflops']:.3f} TFLOP/s ({peak['dtype']})", flush=True)
    settings = settings_of(args)
    settings["device"] = device.type
    result = {"benchmark": "throughput", "settings": settings, "environment": environment(),
                  "peak": peak, "groups": [], "models": {}, "pairs": {}}
    for specs in groups:
        print(f"group: {', '.join(s.label for s in specs)}", flush=True)
        if args.compile:
            _reset_compiler()
        benches = [prepare(spec, args, device) for spec in specs]
        rates = measure_group(benches, args, device)
        result["groups"].append([b.spec.label for b in benches])
        for bench in benches:
            result["models"][bench.spec.label] = model_stats(bench, rates[bench.spec.label], args)
        for pair in find_pairs(benches):
            result["pairs"][f"{pair['subject']} / {pair['baseline']}"] = pair_stats(pair, rates)
        del benches
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _finish(result, args)  # partial results survive a run cut short
    # The peak again after the models: other load on the machine lowers one of the two less.
    again = measure_matmul_peak(device, peak_dtype(device, args.precision), args.peak_size)
    peak.update(tflops=max(peak["tflops"], again["tflops"]),
                tflops_before_after=[peak["tflops"], again["tflops"]])
    _finish(result, args)
    print(result["markdown"], flush=True)
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.throughput``: exit code 2 and one line on bad input."""
    return run_command("throughput", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
