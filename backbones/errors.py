"""The project's errors for a user's own mistakes, and how the command-line tools report them.

``InputError`` is what every part of the project raises for input a user gave: an unknown model
name or keyword, a bad value, a bad config key, a file in the wrong format, weights that do not
fit. The command-line tools report it in one line (no traceback) and exit with status 2; any other
exception is a bug somewhere (ours, or a library's) and keeps its traceback. ``SEBENCH_DEBUG=1``
in the environment (``sebench --debug``) prints the traceback of an ``InputError`` too. Both
classes subclass the built-in error a caller would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` still works.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping

__all__ = ["DEBUG_ENV", "InputError", "MissingFileError", "debug_requested", "run_command"]

# Read by every command, and inherited by the processes a command starts (DDP ranks).
DEBUG_ENV = "SEBENCH_DEBUG"


class InputError(ValueError):
    """Bad input from the user: the message names what is wrong and what was expected."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named, or the expected layout needs, does not exist."""


def debug_requested() -> bool:
    """Whether ``SEBENCH_DEBUG`` asks for tracebacks (set, and not "", "0", "false" or "no")."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_command(
    prog: str,
    body: Callable[[], object],
    *,
    exit_codes: Mapping[type[BaseException], int] | None = None,
) -> int:
    """Run a command-line tool's ``body``; report the user's mistakes in one line.

    An exception of a class in ``exit_codes`` (by default ``InputError``, exit status 2) prints
    ``"<prog>: error: <message>"`` on stderr and returns its status; with ``SEBENCH_DEBUG=1`` its
    traceback comes first. Any other exception propagates with its traceback: it is a bug, not
    bad input, and must not be dressed up as one.

    Args:
        prog: the command as the user typed it, e.g. ``"sebench fit"``.
        body: the command; its return value, where it is an int, is the exit status (else 0).
        exit_codes: the exception classes reported in one line, with their exit status.

    Returns:
        The exit status.
    """
    codes = dict(exit_codes or {InputError: 2})
    try:
        status = body()
    except tuple(codes) as err:
        if debug_requested():
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return next(code for cls, code in codes.items() if isinstance(err, cls))
    return status if isinstance(status, int) else 0
