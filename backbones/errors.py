"""The project's errors for a user's own mistakes.

``InputError`` is what every part of the project raises for input a user gave: an unknown model
name or keyword, a bad value, a bad config key, a file in the wrong format, weights that do not
fit. The command-line tools report it in one line (no traceback) and exit with status 2; any other
exception is a bug somewhere and keeps its traceback. Both classes subclass the built-in error a
caller would expect (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` still works.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingFileError"]


class InputError(ValueError):
    """Bad input from the user: the message names what is wrong and what was expected."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named, or the expected layout needs, does not exist."""
