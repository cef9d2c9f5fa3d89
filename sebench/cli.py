"""``sebench``: the project's command line. Each subcommand lives beside the code it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import models_cmd

# Training and evaluation are LightningCLI programs with their own parser: their arguments are
# handed over untouched (DDP relaunches the same command line on every rank).
LIGHTNING_COMMANDS = {
    "fit": "train a classification experiment (sebench fit --config configs/...yaml)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
}


def build_parser() -> argparse.ArgumentParser:
    from tasks.classification import report

    parser = argparse.ArgumentParser(
        prog="sebench",
        description="Squeeze-and-Excitation networks: backbones and downstream benchmarks.",
        epilog="Run `sebench COMMAND --help` for a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    for command in (models_cmd, report):
        command.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from tasks.classification.cli import main as lightning_main

        return lightning_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as err:
        # Bad user input (unknown model, keyword, knob value): one clear line, no traceback.
        print(f"sebench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
