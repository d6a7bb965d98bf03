"""Files that hold only plain data: tensors, numbers, strings, lists, dicts.

Checkpoints and the feature cache are read with ``torch.load(..., weights_only=True)``,
which rebuilds nothing else, so a file crafted to run code when unpickled is refused
instead of run. :func:`to_plain` turns numpy arrays and scalars into that form before
saving; :func:`to_numpy` turns tensors back into numpy arrays for code that works on arrays.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from .errors import HemeplmError

PLAIN = "tensors, numbers, strings, lists and dicts"
#: how torch's safe unpickler names a class or function it will not build
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def to_plain(obj):
    """``obj`` with numpy arrays as tensors, numpy scalars as Python numbers and tuples as lists.

    Raises:
        TypeError: for anything else that is not a tensor, number, string, None, list or dict.
    """
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)):
        return obj
    raise TypeError(f"{type(obj).__name__} is not plain data ({PLAIN})")


def to_numpy(obj):
    """``obj`` with every tensor (on the CPU) as a numpy array; dicts and lists are walked."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_numpy(v) for v in obj]
    return obj


def load_plain(path: str | Path, what: str, advice: str, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``.

    Raises:
        HemeplmError: naming ``path``, when the file holds any other Python object (nothing of it
            is built, so nothing in it runs); the message says it is a ``what`` (e.g. "checkpoint")
            and ends with ``advice``.
        Exception: whatever ``torch.load`` raises for an unreadable file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None:  # not a pickle the safe loader understands: unreadable, nothing was run
            raise
        raise HemeplmError(f"refused: this {what} holds Python objects other than {PLAIN} ({found.group(1)}), "
                           f"and loading them could run code; {advice}", path) from None
