"""What every command shares: the help formatter, ``--force``/``--quiet``, ``--truncated``, value checks
and the one-line error exit."""

from __future__ import annotations

import argparse
import math
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


#: what the data loader tells train.py to set, and what a command with :func:`add_truncated_option` says instead
TRUNCATED_HINTS = {"set data.truncated=warn": "pass --truncated warn"}
#: ... and what a command with neither says instead
COMPLETE_FILES_HINTS = {"set data.truncated=warn to use the complete frames":
                        "this command reads complete files only: cut the file to its complete frames first"}


def add_truncated_option(parser: argparse.ArgumentParser, unset: str = "error") -> None:
    """``--truncated error|warn``: what a DCD/XTC file cut mid-frame gives; the loader's hint to set
    ``data.truncated=warn`` (train.py's config key) then names this option (:func:`exit_on_error`)."""
    parser.add_argument("--truncated", choices=("error", "warn"), default=None,
                        help=f"a DCD/XTC file cut mid-frame: error, or warn and use its complete frames (unset: {unset})")
    parser.set_defaults(hints=TRUNCATED_HINTS)


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


def _number(text: str, ok: Callable[[float], bool], bound: str) -> float:
    """``text`` as a finite float satisfying ``ok``, else an argparse usage error naming ``bound``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    return _number(text, lambda v: v > 0, "above 0")


def non_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    return _number(text, lambda v: v >= 0, "of at least 0")


def fraction(text: str) -> float:
    """An argparse type: a finite number from 0 to 1."""
    return _number(text, lambda v: 0 <= v <= 1, "from 0 to 1")


def exit_on_error(prog: str, action: Callable[[], None], hints: dict[str, str] | None = None) -> None:
    """Run ``action``; a :class:`~hemeplm.errors.HemeplmError` is printed as ``PROG: error: ...`` on one line
    and exits with code 2. ``hints`` replaces advice in the message with what this command takes
    (:data:`TRUNCATED_HINTS`)."""
    try:
        action()
    except HemeplmError as exc:
        message = " ".join(str(exc).splitlines())
        for said, instead in (hints or {}).items():
            message = message.replace(said, instead)
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
