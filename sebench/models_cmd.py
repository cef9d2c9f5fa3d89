"""``sebench models`` and ``sebench complexity``: the registry and its parameter/MAC counts."""

from __future__ import annotations

import argparse
import json
from typing import Any

import backbones
from backbones.errors import InputError


def _kwarg(text: str) -> tuple[str, Any]:
    try:
        ((key, value),) = backbones.parse_kwargs([text], "--kwarg").items()
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return key, value


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="list registry models with params and GMACs at their native input size",
        description="One row per registry model: name, native input size, parameters and "
        "GMACs (multiply-accumulates, the paper's 'GFLOPs').",
    )
    models.add_argument("--pattern", default="*", help="fnmatch filter, e.g. 'se_*' (default: *)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=run_models)

    complexity = subparsers.add_parser(
        "complexity",
        help="params and GMACs of models with given keywords",
        description="Parameters and GMACs of one or more registry models, with any registry "
        "keyword (the SE knobs have their own flags).",
    )
    complexity.add_argument("names", nargs="+", metavar="NAME", help="registry model names")
    complexity.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"),
                            help="input size (default: the model's native size)")
    complexity.add_argument("--se-reduction", type=int, help="SE reduction ratio r (16)")
    complexity.add_argument("--se-squeeze", choices=backbones.layers.SQUEEZES,
                            help="squeeze operator (avg)")
    complexity.add_argument("--se-gate", choices=sorted(backbones.layers.GATES),
                            help="excitation gate (sigmoid)")
    complexity.add_argument("--se-placement", choices=backbones.layers.PLACEMENTS,
                            help="where the SE block sits (standard)")
    complexity.add_argument("--se-stages", type=int, nargs="+", metavar="S",
                            help="stages with SE, in the family's numbering (all)")
    complexity.add_argument("--kwarg", type=_kwarg, action="append", default=[],
                            metavar="KEY=VALUE", help="any other registry keyword, repeatable")
    complexity.add_argument("--json", action="store_true", help="print JSON instead of a table")
    complexity.set_defaults(run=run_complexity)


def _has_se(model) -> bool:
    return any(isinstance(m, backbones.SEBlock) for m in model.modules())


def _row(name: str, kwargs: dict[str, Any], input_size: tuple[int, ...] | None) -> dict[str, Any]:
    model = backbones.create_model(name, **kwargs)
    size = tuple(input_size or model.default_input_size)
    counts = backbones.model_complexity(model, size)
    return dict(name=name, kwargs=kwargs, input_size=list(size), params=counts["params"],
                macs=counts["macs"])


def _print(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        extra = " ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        size = "x".join(map(str, r["input_size"][1:]))
        print(f"{r['name']:<28} {size:>8} {r['params'] / 1e6:>10.2f} {r['macs'] / 1e9:>9.3f}  {extra}")


def _header() -> None:
    print(f"{'model':<28} {'input':>8} {'params(M)':>10} {'GMACs':>9}")


def run_models(args: argparse.Namespace) -> int:
    names = backbones.list_models(args.pattern)
    if not names:
        raise InputError(f"no model matches {args.pattern!r}")
    if not args.json:
        _header()
    rows = []
    for name in names:  # printed as they come: the largest models take a few seconds each
        rows.append(_row(name, {}, None))
        if not args.json:
            _print(rows[-1:])
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def run_complexity(args: argparse.Namespace) -> int:
    kwargs = dict(args.kwarg)
    for knob in ("reduction", "squeeze", "gate", "placement", "stages"):
        value = getattr(args, f"se_{knob}")
        if value is not None:
            kwargs[f"se_{knob}"] = value
    se_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("se_")}
    rows = []
    for name in args.names:
        # SE knobs apply to SE models only, so `se_resnet50 resnet50 --se-reduction 8` compares.
        is_se = kwargs.get("se", _has_se(backbones.create_model(name, **kwargs)))
        rows.append(_row(name, {**kwargs, **se_kwargs} if is_se else kwargs, args.input_size))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _header()
        _print(rows)
    return 0
