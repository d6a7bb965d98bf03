"""The one error type the project raises for bad input.

Every message names the file (when there is one) and the problem, so that a
user reads what went wrong instead of a stack trace from a library.
"""

from __future__ import annotations

from pathlib import Path


class HemeplmError(ValueError):
    """Bad input: a file that is missing, malformed or does not fit the run."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def require_file(path: str | Path) -> Path:
    """Return ``path`` as a Path, or raise :class:`HemeplmError` if it is not a file."""
    p = Path(path)
    if not p.is_file():
        raise HemeplmError("file not found" if not p.exists() else "not a regular file", p)
    return p
