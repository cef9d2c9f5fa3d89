"""Variants of one step timed interleaved, and their paired ratios."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from benchmarks.throughput import _rotated, time_calls


def time_variants(
    steps: Callable[[str], Callable[[], object]],
    names: Sequence[str],
    *,
    warmup: int,
    repeats: int,
    calls: int,
    device: torch.device,
    around: Callable[[str], AbstractContextManager] = lambda name: nullcontext(),
) -> dict[str, list[float]]:
    """Seconds per call of each variant's step, one figure per round.

    Every variant gets ``warmup`` untimed calls; then each round times ``calls`` calls of every
    variant in turn, the first one rotating per round, so that drifts of the machine hit all
    alike.

    Args:
        steps: the step of a variant, by name.
        names: the variants.
        around: a context the variant's calls run in (e.g. one that switches a model over).
    """
    for name in names:
        with around(name):
            time_calls(steps(name), warmup, device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in _rotated(list(names), repeat):
            with around(name):
                seconds[name].append(time_calls(steps(name), calls, device) / calls)
    return seconds


def median_ms(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's median time per call, in milliseconds."""
    return {name: round(1e3 * statistics.median(s), 3) for name, s in seconds.items()}


def paired_ratio(seconds: dict[str, list[float]], subject: str, baseline: str) -> float:
    """Median over rounds of ``subject``'s time over ``baseline``'s in the same round."""
    pairs = zip(seconds[subject], seconds[baseline])
    return round(statistics.median(a / b for a, b in pairs), 4)


def variants_table(
    ms: dict[str, float], ratio: dict[str, float], *, unit: str, baseline: str
) -> list[str]:
    """Markdown rows: each variant's median time and its paired ratio to ``baseline``."""
    lines = [
        f"| variant | ms per {unit} (median) | time / {baseline} (paired median) |",
        "|---|---|---|",
    ]
    return lines + [f"| {name} | {ms[name]:.2f} | {ratio[name]:.4f} |" for name in ms]
