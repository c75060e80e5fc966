"""User-facing errors: one line that says what is wrong and how to fix it, exit code 2.

Code deep inside the project raises :class:`UserError` for problems the user can fix (bad flags, a wrong
folder, a missing weights file). The command-line entry points wrap their work in :func:`exit_on_user_error`,
which prints the message as one line on stderr and exits with code 2 instead of showing a traceback.
Set ``AGE_CLASSIFIER_DEBUG=1`` (or pass ``--debug``) to see the full traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Iterator

DEBUG_ENV = "AGE_CLASSIFIER_DEBUG"
USAGE_EXIT_CODE = 2


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit`` characters."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


def add_debug_argument(parser) -> None:
    """``--debug``, the same in every command: full tracebacks instead of one line (as ``AGE_CLASSIFIER_DEBUG=1``)."""
    parser.add_argument("--debug", action="store_true", help=f"show full tracebacks (same as {DEBUG_ENV}=1)")


def debug_enabled() -> bool:
    """True when the user asked for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "False")


@contextmanager
def exit_on_user_error(program: str, debug: bool = False) -> Iterator[None]:
    """Turn :class:`UserError` (and a few environment errors) into ``program: error: ...`` and exit code 2.

    With ``debug`` (or ``AGE_CLASSIFIER_DEBUG=1``) the exception propagates with its full traceback.
    """
    debug = debug or debug_enabled()
    try:
        yield
    except UserError as err:
        if debug:
            raise
        message = str(err)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original message only
            message = message.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]
        message = " ".join(message.split())  # exactly one line
        print(f"{program}: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE) from None
    except OSError as err:
        if debug:
            raise
        # Disk full, permission denied, read-only folder: the user can fix these, a traceback does not help.
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"{program}: error: {err.strerror or err}{where}; check the path, free space and permissions "
              f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE) from None


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is reported in one line (no usage block) with exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see --help)\n")
