"""What every command shares: the help formatter, ``--force``/``--quiet``, value checks and the
one-line error exit."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from hemeplm.errors import HemeplmError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: X)" to every option's help,
    unless the default is None or False (the help then says what unset means) or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        shown = not unset and "default" not in text
        if shown and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
            return f"{text} (default: %(default)s)"
        return text


def add_output_flags(parser: argparse.ArgumentParser, force: str) -> None:
    """``--force`` (``force`` says what it overwrites) and ``--quiet``, for subcommands that write outputs."""
    parser.add_argument("--force", action="store_true", help=force)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, else a usage error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def exit_on_error(prog: str, action: Callable[[], None]) -> None:
    """Run ``action``; a :class:`~hemeplm.errors.HemeplmError` is printed as ``PROG: error: ...`` on one line
    and exits with code 2."""
    try:
        action()
    except HemeplmError as exc:
        print(f"{prog}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        sys.exit(2)
