"""``sebench excitations`` and ``sebench prune-se``: the paper's Sec. 7.2 on a trained model.

``excitations`` records every chosen SE block's excitation over sampled validation images of a
few classes and of all classes, and writes per-class means (JSON, NPZ), Fig. 7 / Fig. 8 style
plots and a markdown summary (class specificity, saturation). ``prune-se`` turns chosen SE
blocks into identities and reports parameters saved and the validation error before and after.
Both read a checkpoint of a classification run (or a plain state dict) and any classification
data module (``--data-config``) or CIFAR (``--dataset``).

This module only declares the options: ``sebench`` builds every command's parser at start-up,
so the work (Lightning, the data modules, plotting) is imported from ``commands.py`` when one of
these commands runs.
"""

from __future__ import annotations

import argparse

from backbones.prune import SELECTOR_HELP

__all__ = ["add_parsers"]


def _run_excitations(args: argparse.Namespace) -> int:
    from .commands import run_excitations

    return run_excitations(args)


def _run_prune_se(args: argparse.Namespace) -> int:
    from .commands import run_prune_se

    return run_prune_se(args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_model_and_data(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="a Lightning .ckpt of a classification run (model name, kwargs and classes come "
        "from it), or a plain state_dict .pth of a registry model (needs --model)",
    )
    model.add_argument("--model", metavar="NAME", help="registry name (checked against a .ckpt)")
    model.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="create_model keywords of a plain state_dict, e.g. se_reduction=8 'layers=(1, 1, 1)'",
    )
    model.add_argument("--num-classes", type=_positive_int, help="classes of a plain state_dict")
    data = parser.add_argument_group("data (the validation split, evaluation transform)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-config",
        metavar="FILE.yaml",
        help="a LightningCLI config (configs/*/*.yaml, a run's config.yaml) whose data: section "
        "(class_path + init_args) builds the data module; or that section alone",
    )
    source.add_argument("--dataset", choices=("cifar10", "cifar100"), help="CIFAR shortcut")
    data.add_argument("--data-dir", metavar="DIR", help="data folder (overrides the config's)")
    data.add_argument(
        "--synthetic", action="store_true", help="CIFAR's generated stand-in (no files needed)"
    )
    data.add_argument("--batch-size", type=_positive_int, help="images per batch (module's)")
    data.add_argument("--num-workers", type=int, help="DataLoader workers (module's)")
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``excitations`` and ``prune-se`` to ``sebench``'s subcommands."""
    excite = subparsers.add_parser(
        "excitations",
        help="SE excitations per class and block (the paper's Sec. 7.2, Figs. 7 and 8)",
        description="Record the excitation of SE blocks over validation images of chosen "
        "classes and of all classes; write per-class means per channel (JSON, NPZ), Fig. 7 "
        "(class means + all) and Fig. 8 (mean +- std within a class) plots, and a markdown "
        "summary with class specificity and saturation per block.",
    )
    _add_model_and_data(excite)
    excite.add_argument(
        "--classes",
        nargs="+",
        required=True,
        metavar="CLASS",
        help="classes by name (cat dog; Places365: airfield) or label index",
    )
    excite.add_argument(
        "--blocks",
        nargs="+",
        default=["last"],
        metavar="SEL",
        help=f"SE blocks, each {SELECTOR_HELP} (default: last)",
    )
    excite.add_argument(
        "--samples-per-class",
        type=_positive_int,
        default=50,
        help="images sampled per class, for the chosen classes and for 'all' (default: 50)",
    )
    excite.add_argument(
        "--channels",
        type=int,
        default=50,
        help="evenly spaced channels drawn per panel; 0: all (default: 50, as the paper)",
    )
    excite.add_argument(
        "--saturation-eps",
        type=float,
        default=0.05,
        help="values below eps or above 1 - eps count as saturated (default: 0.05)",
    )
    excite.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    excite.add_argument("--out", default="excitations", metavar="DIR", help="output folder")
    excite.set_defaults(run=_run_excitations)

    prune = subparsers.add_parser(
        "prune-se",
        help="turn SE blocks into identities; parameters saved, error before and after",
        description="Evaluate top-1/top-5 error on the validation data (Lightning's "
        "Trainer.validate with the classification module's metrics), prune the chosen SE blocks "
        "(parameter-free identities, no retraining), evaluate again; print a markdown table and "
        "write JSON (the paper drops SE_5_* of SE-ResNet-50: -4%% parameters).",
    )
    _add_model_and_data(prune)
    prune.add_argument(
        "--devices",
        type=_positive_int,
        default=1,
        help="processes evaluating together (DDP, one per GPU; gloo on the CPU) (default: 1)",
    )
    prune.add_argument(
        "--precision",
        default="32-true",
        choices=("32-true", "bf16-mixed", "16-mixed"),
        help="Lightning precision of the evaluations (default: 32-true)",
    )
    prune.add_argument(
        "--blocks", nargs="+", required=True, metavar="SEL", help=f"SE blocks, each {SELECTOR_HELP}"
    )
    prune.add_argument("--out", default="prune_se", metavar="DIR", help="output folder")
    prune.add_argument(
        "--save", metavar="PATH", help="save the pruned state_dict here (loads back with --ckpt)"
    )
    prune.set_defaults(run=_run_prune_se)
