"""What the stop on a non-finite loss costs a training step: none, a per-step check, the guard.

    OMP_NUM_THREADS=2 python -m benchmarks.nonfinite_check \\
        --model 'se_preact_resnet110[layers=(3,3,3)]' --batch-size 64 --device cpu
    python -m benchmarks.nonfinite_check --model se_preact_resnet110 --batch-size 128 \\
        --precision bf16 --device cuda

One training step (forward, cross-entropy, backward, SGD with momentum) in four variants, each
on its own copy of the same model:

    none       torch's default SGD (foreach), no check
    per_step   the same, with ``bool(torch.isfinite(loss))`` every step: a host sync per step
               (the DDP collective of a real run comes on top)
    fused      ``SGD(fused=True)``, no check
    guard      ``SGD(fused=True)`` with ``tasks._nonfinite.NonFiniteGuard``: the loss and every
               gradient checked on the device, the update skipped there by the optimizer's
               ``found_inf``, the flag read on the host every ``--check-every`` steps

The variants are timed interleaved (the starting one rotating per round); each round's time of a
variant is divided by the same round's time of ``none`` (and ``guard``'s by ``fused``'s), and the
median ratio is reported. On a CPU a host sync costs nothing, so ``per_step`` shows what a check
costs there; on a GPU it shows the stall of waiting for the device every step.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbones.errors import InputError, run_command
from benchmarks._env import describe, environment, require_at_least_one, save_result, settings_of
from benchmarks._specs import build_model, parse_spec
from benchmarks._variants import median_ms, paired_ratio, time_variants, variants_table
from benchmarks.throughput import PRECISIONS, _autocast, _device
from tasks._nonfinite import NonFiniteGuard

VARIANTS = ("none", "per_step", "fused", "guard")


def make_variant(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dtype: torch.dtype | None,
    check_every: int,
) -> Callable[[], None]:
    """One training step of ``model`` in variant ``name`` (see the module docstring)."""
    if name not in VARIANTS:
        raise InputError(f"unknown variant {name!r}; expected one of {list(VARIANTS)}")
    fused = name in ("fused", "guard")
    # A small learning rate: random labels must not drive the weights to NaN during the run.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, fused=fused)
    guard = NonFiniteGuard("", check_every=check_every) if name == "guard" else None
    steps = 0

    def step() -> None:
        nonlocal steps
        with _autocast(x.device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        if name == "per_step" and not bool(torch.isfinite(loss)):
            raise RuntimeError("non-finite loss")
        optimizer.zero_grad(set_to_none=True)
        if guard is not None:
            guard.record_loss(loss, epoch=0, step=steps)
        loss.backward()
        if guard is not None:
            guard.flag_step(optimizer)
            guard.skips_on_device(optimizer)
        optimizer.step()
        steps += 1
        if guard is not None and steps % check_every == 0:
            guard.check()

    return step


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default="se_preact_resnet110[layers=(3,3,3)]",
        help="registry model, NAME or NAME[key=value,...] (a 20-layer SE-ResNet)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    # No fp16: there a GradScaler checks the gradients and skips the step itself.
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="(fp32)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (64)")
    p.add_argument("--input-size", type=int, help="image side (the model's native size)")
    p.add_argument("--check-every", type=int, default=100, help="guard: steps per host read")
    p.add_argument("--repeats", type=int, default=30, help="rounds over the variants (30)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round (5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (3)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    require_at_least_one(args, "batch_size", "check_every", "repeats", "steps")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment()  # the code as it is when the run starts
    device = _device(args.device)
    spec = parse_spec(args.model)
    if spec.timm:
        raise InputError("--model takes a registry model (the guard is the project's)")
    torch.manual_seed(0)
    model = build_model(spec).to(device).train()
    channels, height, width = model.default_input_size
    if args.input_size:
        height = width = args.input_size
    x = torch.randn(args.batch_size, channels, height, width, device=device)
    y = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    dtype = PRECISIONS[args.precision]
    steps = {
        name: make_variant(name, copy.deepcopy(model), x, y, dtype=dtype,
                           check_every=args.check_every)
        for name in VARIANTS
    }  # fmt: skip
    seconds = time_variants(
        steps.__getitem__, VARIANTS, warmup=args.warmup, repeats=args.repeats, calls=args.steps,
        device=device,
    )  # fmt: skip
    result = {
        "benchmark": "nonfinite_check",
        "settings": settings_of(args),
        "environment": env,
        "ms_per_step": median_ms(seconds),
        "time_over_none": {name: paired_ratio(seconds, name, "none") for name in VARIANTS},
        "guard_over_fused": paired_ratio(seconds, "guard", "fused"),
    }
    print(_markdown(result))
    save_result(result, args.out)
    return result


def _markdown(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        f"{s['model']}, batch {s['batch_size']}, {s['precision']}, {s['device']}, "
        f"{s['repeats']} rounds x {s['steps']} steps, guard read every {s['check_every']} "
        f"steps; {describe(env)}.",
        "",
    ]
    lines += variants_table(
        result["ms_per_step"], result["time_over_none"], unit="step", baseline="none"
    )
    lines.append(f"\nguard / fused (paired median): {result['guard_over_fused']:.4f}")
    return "\n".join(lines)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.nonfinite_check``: exit code 2 and one line on bad input."""
    return run_command("nonfinite_check", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
