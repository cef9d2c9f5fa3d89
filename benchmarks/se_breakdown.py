"""Where SE's time goes: one SE model timed with parts of its SE blocks switched off.

    OMP_NUM_THREADS=2 python -m benchmarks.se_breakdown --model se_resnet50 --batch-size 1

Every variant runs on the same model instance, so the weights sit at the same addresses and
the comparison is free of the 1-2% that separate two instances of one model on a CPU:

    plain      SE off: each block returns branch + shortcut, the plain model's forward
    structure  the SE block's fused rescale-and-sum (addcmul) with a fixed scale
    squeeze    + the squeeze (sum over H x W); its result is dropped, the scale stays fixed
    full       the SE block as it is (squeeze, two FC layers, gate, rescale-and-sum)

The variants are timed interleaved (the starting one rotating per repeat); each repeat's time is
divided by the same repeat's ``plain`` time and the median ratio is reported. Applies to the
residual families (ResNet, ResNeXt, SENet-154, pre-activation ResNets) with SE at the standard
site.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

import backbones
from backbones.errors import InputError, run_command
from backbones.layers.se import ResidualSE, SEBlock
from benchmarks._env import describe, environment, require_at_least_one, save_result, settings_of
from benchmarks._variants import median_ms, paired_ratio, time_variants, variants_table
from benchmarks.throughput import _device, make_step

VARIANTS = ("plain", "structure", "squeeze", "full")


def standard_se_blocks(model: nn.Module) -> list[ResidualSE]:
    """The residual blocks of ``model`` with an SE block at the standard site."""
    blocks = [m for m in model.modules() if isinstance(m, ResidualSE) and m.se_site == "standard"]
    if not blocks:
        raise InputError(
            f"{type(model).__name__} has no residual block with SE at the standard site; this "
            "benchmark takes an SE ResNet, ResNeXt, SENet-154 or pre-activation ResNet"
        )
    return blocks


def _fixed_scale(block: SEBlock, x: torch.Tensor) -> torch.Tensor:
    # Cached, so the variant adds no allocation of its own.
    scale = block.__dict__.get("_fixed_scale")
    if scale is None or scale.shape[:2] != x.shape[:2] or scale.dtype != x.dtype:
        scale = block.__dict__["_fixed_scale"] = x.new_full((*x.shape[:2], 1, 1), 0.5)
    return scale


def _structure(block: SEBlock, x: torch.Tensor) -> torch.Tensor:
    return _fixed_scale(block, x)


def _squeeze(block: SEBlock, x: torch.Tensor) -> torch.Tensor:
    x.sum((2, 3))
    return _fixed_scale(block, x)


@contextmanager
def variant(blocks: Sequence[ResidualSE], name: str) -> Iterator[None]:
    """Switch every block to ``name`` (one of :data:`VARIANTS`) for the ``with`` body."""
    excitation = {"structure": _structure, "squeeze": _squeeze}.get(name)
    for block in blocks:
        block.se_site = None if name == "plain" else "standard"
        if excitation is not None:
            block.se.excitation = types.MethodType(excitation, block.se)
    try:
        yield
    finally:
        for block in blocks:
            block.se_site = "standard"
            block.se.__dict__.pop("excitation", None)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="se_resnet50", help="registry name (se_resnet50)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images per call (1)")
    p.add_argument("--input-size", type=int, help="image side (the model's native size)")
    p.add_argument("--repeats", type=int, default=40, help="rounds over the variants (40)")
    p.add_argument("--calls", type=int, default=4, help="timed calls per variant per round (4)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first (3)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    require_at_least_one(args, "batch_size", "repeats", "calls")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment()  # the code as it is when the run starts
    device = _device(args.device)
    model = backbones.create_model(args.model).to(device).train(args.mode == "train")
    blocks = standard_se_blocks(model)
    channels, height, width = model.default_input_size
    if args.input_size:
        height = width = args.input_size
    x = torch.randn(args.batch_size, channels, height, width, device=device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    step = make_step(model, x, y, train=args.mode == "train", dtype=None)
    seconds = time_variants(
        lambda name: step, VARIANTS, warmup=args.warmup, repeats=args.repeats, calls=args.calls,
        device=device, around=lambda name: variant(blocks, name),
    )  # fmt: skip
    result = {
        "benchmark": "se_breakdown",
        "settings": settings_of(args),
        "environment": env,
        "se_blocks": len(blocks),
        "ms_per_call": median_ms(seconds),
        "time_over_plain": {k: paired_ratio(seconds, k, "plain") for k in seconds},
    }
    print(_markdown(result))
    save_result(result, args.out)
    return result


def _markdown(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        f"{s['model']} ({result['se_blocks']} SE blocks), {s['mode']}, {s['device']}, "
        f"batch {s['batch_size']}, {s['repeats']} rounds x {s['calls']} calls; {describe(env)}.",
        "",
    ]
    lines += variants_table(
        result["ms_per_call"], result["time_over_plain"], unit="call", baseline="plain"
    )
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.se_breakdown``: exit code 2 and one line on bad input."""
    return run_command("se_breakdown", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
