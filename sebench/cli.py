"""``sebench``: the project's command line. Each subcommand lives beside the code it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from backbones.errors import DEBUG_ENV, run_command

# Commands with a parser of their own (LightningCLI, detectron2's): their arguments are handed
# over untouched (DDP relaunches the same command line on every rank). OWN_PARSER_COMMANDS map
# to the module whose ``main(argv)`` gets the arguments after the command's name.
LIGHTNING_COMMANDS = {
    "fit": "train a classification experiment (sebench fit --config configs/...yaml)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
}
OWN_PARSER_COMMANDS = {
    "detect": (
        "detectron2 Faster R-CNN, RetinaNet, Mask R-CNN on COCO: sebench detect train|eval "
        "--config-file configs/coco/...",
        "tasks.detection.d2.train",
    ),
    "tv-detect": (
        "torchvision Faster/Mask R-CNN, RetinaNet, FCOS on COCO with Lightning: sebench "
        "tv-detect fit|validate|test "
        "--config configs/coco/tv_...yaml",
        "tasks.detection.tv_cli",
    ),
}
DETECTRON2_MISSING = (
    "detectron2 is not installed; it is not on the package index in usable form, build it from "
    "source: pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)


# Commands on argparse, by the module whose ``add_parsers`` declares them. Only the module of
# the command being run is imported (the classification and analysis ones pull in Lightning,
# seconds of start-up that `sebench models` does not need); `sebench --help` imports them all.
ARGPARSE_COMMANDS = {
    "models": "sebench.models_cmd",
    "complexity": "sebench.models_cmd",
    "report": "tasks.classification.report",
    "plot": "tasks.classification.report",
    "excitations": "tasks.analysis.cli",
    "prune-se": "tasks.analysis.cli",
    "convert-weights": "tasks.detection.convert_weights",
    "prepare-shards": "tasks.classification.data.shards",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``sebench`` parser; with ``command``, only that command's options are declared."""
    parser = argparse.ArgumentParser(
        prog="sebench",
        description="Squeeze-and-Excitation networks: backbones and downstream benchmarks.",
        epilog="Run `sebench COMMAND --help` for a command's options. A mistake in the input "
        "(a name, a value, a file) is reported in one line with exit status 2; any other error "
        f"shows its traceback. --debug (or {DEBUG_ENV}=1) shows the traceback always.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of every error (sets {DEBUG_ENV}=1 for the command and the "
        "processes it starts); before the command: sebench --debug fit ...",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in ARGPARSE_COMMANDS:
        importlib.import_module(ARGPARSE_COMMANDS[command]).add_parsers(subparsers)
        return parser
    for name, text in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    for name, (text, _) in OWN_PARSER_COMMANDS.items():
        subparsers.add_parser(name, help=text, add_help=False)
    for module in dict.fromkeys(ARGPARSE_COMMANDS.values()):
        importlib.import_module(module).add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--debug":
        # Through the environment: the Lightning and detectron2 commands parse their own
        # arguments, and the processes they start (DDP ranks) inherit it.
        os.environ[DEBUG_ENV] = "1"
        argv = argv[1:]
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from tasks.classification.cli import main as lightning_main

        return lightning_main(argv)
    if argv and argv[0] in OWN_PARSER_COMMANDS:
        try:
            module = importlib.import_module(OWN_PARSER_COMMANDS[argv[0]][1])
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] != "detectron2":
                raise
            print(f"sebench {argv[0]}: error: {DETECTRON2_MISSING}", file=sys.stderr)
            return 2
        return module.main(argv[1:]) or 0
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    return run_command(f"sebench {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
