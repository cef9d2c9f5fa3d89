"""``sebench``: the project's command line. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import models_cmd

COMMANDS = [models_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sebench",
        description="Squeeze-and-Excitation networks: backbones and downstream benchmarks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
