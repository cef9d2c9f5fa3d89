"""``sebench report`` and ``sebench plot``: classification runs as one table and one figure.

A run directory is what ``sebench fit`` / ``sebench test`` leave in ``trainer.log_dir``:
``results.json`` (final errors, the run's config and the paper's figure) and the CSV logger's
``metrics.csv``. Either may sit in the directory given or below it (``version_0/``, ...); the
newest is used. ``report`` pairs each plain run with its SE twin (the paper's Tables 4-6: original
vs SE vs the paper's numbers); ``plot`` draws training (dashed) and validation (solid) curves per
epoch, like the paper's Fig. 4.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import backbones
from backbones.errors import InputError

RESULTS = "results.json"
METRICS = "metrics.csv"
METRIC_LABELS = {"top1_err": "top-1 error (%)", "loss": "cross-entropy loss"}
_REQUIRED_KEYS = ("model_name", "dataset", "top1_err")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="one markdown table of several runs: plain vs SE vs the paper",
        description="Gather the results.json of several runs into one markdown table, one row "
        "per dataset and architecture, the plain run beside its SE twin and the paper's figures.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run (log) directories")
    report.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    report.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    report.set_defaults(run=run_report)

    plot = subparsers.add_parser(
        "plot",
        help="training and validation curves of several runs, to a PNG",
        description="Training (dashed) and validation (solid) curves per epoch from each run's "
        "metrics.csv, one colour per run, like the paper's Fig. 4.",
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run (log) directories")
    plot.add_argument("--out", default="curves.png", help="PNG file to write (default: curves.png)")
    plot.add_argument(
        "--metric",
        choices=sorted(METRIC_LABELS),
        default="top1_err",
        help="curve to draw (default: top1_err)",
    )
    plot.set_defaults(run=run_plot)


def run_report(args: argparse.Namespace) -> int:
    rows = report_rows([load_results(d) for d in args.run_dirs])
    table = markdown_table(rows)
    if args.out:
        Path(args.out).write_text(table + "\n")
    print(json.dumps(rows, indent=2) if args.json else table)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    print(plot_curves(args.run_dirs, args.out, metric=args.metric))
    return 0


def find_newest(run_dir: str | Path, name: str) -> list[Path]:
    """Files called ``name`` in ``run_dir`` or below it, newest first.

    Args:
        run_dir: a run (log) directory.
        name: ``results.json`` or ``metrics.csv``.

    Raises:
        ValueError: ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(f"run directory {root} does not exist")
    found = [p for p in root.rglob(name) if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)), reverse=True)


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """The newest ``results.json`` of a run, with its path added as ``"results_file"``.

    Args:
        run_dir: a run (log) directory.

    Raises:
        ValueError: no ``results.json``, not JSON, or a required key is missing.
    """
    files = find_newest(run_dir, RESULTS)
    if not files:
        raise InputError(f"{run_dir} has no {RESULTS} (in it or below it): has the run finished?")
    try:
        result = json.loads(files[0].read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{files[0]} is not valid JSON: {err}") from err
    missing = [key for key in _REQUIRED_KEYS if key not in result]
    if missing:
        raise InputError(f"{files[0]} lacks the key(s) {missing}")
    return {**result, "results_file": str(files[0])}


def _twin_role(model_name: str, model_kwargs: dict[str, Any]) -> tuple[str, bool]:
    """(architecture shared by the plain/SE twins, whether this run is the SE one)."""
    if model_name.endswith("_plain"):  # senet154_plain is senet154 without SE
        base, is_se = model_name.removesuffix("_plain"), False
    elif f"{model_name}_plain" in backbones.list_models():
        base, is_se = model_name, True
    elif model_name.startswith("se_"):
        base, is_se = model_name.removeprefix("se_"), True
    else:
        base, is_se = model_name, False
    return base, bool(model_kwargs.get("se", is_se))


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[str, str]:
    """JSON of the non-SE keywords (must match between twins) and of the SE knobs."""
    se = {k: v for k, v in kwargs.items() if k.startswith("se_") or (k == "se" and v)}
    shared = {k: v for k, v in kwargs.items() if k != "se" and not k.startswith("se_")}
    return json.dumps(shared, sort_keys=True), json.dumps(se, sort_keys=True)


def report_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, architecture, keywords, synthetic): the plain runs beside each SE
    variant. Several runs in one cell (seeds) give mean, sample std and count.

    Args:
        results: loaded ``results.json`` dicts (see ``load_results``).
    """
    groups: dict[tuple, dict[str, Any]] = defaultdict(
        lambda: {"plain": [], "se": defaultdict(list)}
    )
    for result in results:
        kwargs = result.get("model_kwargs") or {}
        base, is_se = _twin_role(result["model_name"], kwargs)
        shared, se_knobs = _split_kwargs(kwargs)
        key = (result["dataset"], base, shared, bool(result.get("synthetic", False)))
        if is_se:
            groups[key]["se"][se_knobs].append(result)
        else:
            groups[key]["plain"].append(result)
    rows = []
    for (dataset, _, shared, synthetic), group in sorted(groups.items()):
        # the default SE block first, then the variants (reduction, placement, ...)
        variants = sorted(group["se"].items(), key=lambda item: (item[0] != "{}", item[0]))
        for se_knobs, se_runs in variants or [("{}", [])]:
            rows.append(_row(dataset, shared, se_knobs, synthetic, group["plain"], se_runs))
    return rows


def _row(dataset: str, shared: str, se_knobs: str, synthetic: bool, plain: list, se: list) -> dict:
    names = [sorted({r["model_name"] for r in runs}) for runs in (plain, se)]
    knobs = {**json.loads(shared), **json.loads(se_knobs)}
    model = " / ".join(n for group in names for n in group)
    if knobs:
        model += " (" + ", ".join(f"{k}={v}" for k, v in knobs.items()) + ")"
    row: dict[str, Any] = {"dataset": dataset, "model": model, "synthetic": synthetic}
    for side, runs in (("plain", plain), ("se", se)):
        errors = [float(r["top1_err"]) for r in runs]
        row[f"{side}_top1_err"] = statistics.fmean(errors) if errors else None
        row[f"{side}_top1_err_std"] = statistics.stdev(errors) if len(errors) > 1 else None
        row[f"{side}_runs"] = [str(Path(r.get("results_file", ".")).parent) for r in runs]
        papers = [
            r["paper"]["top1_err"]
            for r in runs
            if (r.get("paper") or {}).get("top1_err") is not None
        ]
        row[f"paper_{side}_top1_err"] = papers[0] if papers else None
    both = row["plain_top1_err"] is not None and row["se_top1_err"] is not None
    row["delta"] = row["se_top1_err"] - row["plain_top1_err"] if both else None
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of ``report_rows`` as one markdown table (errors in %, Δ = SE − plain).

    Args:
        rows: from ``report_rows``.
    """
    header = [
        "dataset",
        "model",
        "plain top-1 err (%)",
        "SE top-1 err (%)",
        "paper original",
        "paper SE",
        "Δ (SE − plain)",
        "synthetic",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        cells = [
            row["dataset"],
            row["model"],
            _mean_cell(row["plain_top1_err"], row["plain_top1_err_std"], len(row["plain_runs"])),
            _mean_cell(row["se_top1_err"], row["se_top1_err_std"], len(row["se_runs"])),
            _number(row["paper_plain_top1_err"]),
            _number(row["paper_se_top1_err"]),
            "–" if row["delta"] is None else f"{row['delta']:+.2f}",
            "**yes** (generated data)" if row["synthetic"] else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _mean_cell(mean: float | None, std: float | None, count: int) -> str:
    if std is None:
        return _number(mean)
    return f"{mean:.2f} ± {std:.2f} (n={count})"


def read_curves(
    metrics_file: str | Path, metric: str = "top1_err"
) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch ``train/<metric>`` and ``val/<metric>`` from a Lightning CSVLogger file.

    Training values logged per step are averaged over the epoch; ``<name>_epoch`` columns
    (``on_step`` and ``on_epoch`` logging) are preferred when present. Validation takes the
    epoch's last value.

    Args:
        metrics_file: a ``metrics.csv``.
        metric: ``"top1_err"`` or ``"loss"`` (default: ``"top1_err"``).

    Returns:
        ``{"train": [(epoch, value), ...], "val": [...]}``, epochs counted from 1.
    """
    with open(metrics_file, newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames or [], list(reader)
    curves = {}
    for split in ("train", "val"):
        name = next(
            (c for c in (f"{split}/{metric}_epoch", f"{split}/{metric}") if c in columns), None
        )
        per_epoch: dict[int, list[float]] = defaultdict(list)
        for row in rows:
            if name and row.get(name) and row.get("epoch"):
                per_epoch[int(float(row["epoch"])) + 1].append(float(row[name]))
        pick = statistics.fmean if split == "train" else (lambda values: values[-1])
        curves[split] = [(epoch, pick(values)) for epoch, values in sorted(per_epoch.items())]
    return curves


def run_curves(run_dir: str | Path, metric: str = "top1_err") -> dict[str, list[tuple[int, float]]]:
    """A run's curves, stitched from its ``metrics.csv`` files (one per ``version_N``).

    A resumed run logs to a new version that starts where the last one stopped, so files are
    read newest first and each adds only the epochs before those already taken; a file that
    starts at epoch 1 (a run from scratch) ends the walk, so older attempts are left out. Files
    without curves (a ``test`` run's) are skipped.

    Args:
        run_dir: a run (log) directory.
        metric: ``"top1_err"`` or ``"loss"`` (default: ``"top1_err"``).

    Raises:
        ValueError: no ``metrics.csv``, or none with ``train/<metric>`` / ``val/<metric>`` values.
    """
    files = find_newest(run_dir, METRICS)
    if not files:
        raise InputError(f"{run_dir} has no {METRICS} (in it or below it): was a CSV logger used?")
    stitched: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
    earliest = math.inf
    for metrics_file in files:
        curves = read_curves(metrics_file, metric)
        first = min((epoch for points in curves.values() for epoch, _ in points), default=None)
        if first is None:
            continue
        for split, points in curves.items():
            stitched[split] = [p for p in points if p[0] < earliest] + stitched[split]
        earliest = min(earliest, first)
        if earliest <= 1:
            break
    if not stitched["train"] and not stitched["val"]:
        raise InputError(
            f"no {METRICS} under {run_dir} has a train/{metric} or val/{metric} column with values"
        )
    return stitched


def _run_label(run_dir: str | Path) -> str:
    label = Path(run_dir).resolve().name
    if find_newest(run_dir, RESULTS):  # an unfinished run has curves but no results yet
        result = load_results(run_dir)
        label = f"{result['model_name']} ({result['dataset']})"
        label += " [synthetic]" if result.get("synthetic") else ""
    return label


def plot_curves(
    run_dirs: Sequence[str | Path], out: str | Path = "curves.png", *, metric: str = "top1_err"
) -> Path:
    """Draw each run's training (dashed) and validation (solid) curve to a PNG, Agg backend.

    Args:
        run_dirs: run (log) directories, each with a ``metrics.csv`` in it or below it.
        out: PNG file to write (default: ``curves.png``).
        metric: ``"top1_err"`` or ``"loss"`` (default: ``"top1_err"``).

    Returns:
        The path written.
    """
    if metric not in METRIC_LABELS:
        raise InputError(f"metric must be one of {sorted(METRIC_LABELS)}, got {metric!r}")
    # A bare Figure on an Agg canvas: no pyplot, so no global backend state and no display.
    # Imported here: every `sebench` command builds this module's parser, only `plot` draws.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for index, run_dir in enumerate(run_dirs):
        curves, label = run_curves(run_dir, metric), _run_label(run_dir)
        colour = colours(index % 10)
        for split, style in (("train", "--"), ("val", "-")):
            if curves[split]:
                epochs, values = zip(*curves[split])
                axes.plot(epochs, values, style, color=colour, label=f"{label} {split}")
    axes.set_xlabel("epoch")
    axes.set_ylabel(METRIC_LABELS[metric])
    axes.set_title(f"{METRIC_LABELS[metric]}: training dashed, validation solid")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
