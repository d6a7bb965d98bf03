"""Files: atomic writes, the names of sampling outputs, refusing to overwrite, and plain-data files.

Every output is written to a temporary file and renamed (:func:`atomic_write_bytes`), so a failure
never leaves half a file. Checkpoints and the feature cache are read with ``torch.load(..., weights_only=True)``,
which rebuilds nothing else, so a file crafted to run code when unpickled is refused
instead of run. :func:`to_plain` turns numpy arrays and scalars into that form before
saving; :func:`to_numpy` turns tensors back into numpy arrays for code that works on arrays.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from hemeplm.errors import HemeplmError

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def output_paths(out: str | Path, n_samples: int) -> tuple[list[Path], Path, Path]:
    """Trajectory files (one per sample), topology PDB and JSON summary for ``out``."""
    out = Path(out)
    stem = out.with_suffix("")
    trajs = [out] if n_samples == 1 else [Path(f"{stem}_{i:03d}{out.suffix}") for i in range(n_samples)]
    return trajs, Path(f"{stem}.pdb"), Path(f"{stem}.json")


def sample_output(trajectory: str | Path, suffix: str) -> Path | None:
    """The file :func:`output_paths` writes beside a trajectory: for ``X.xtc`` or ``X_000.xtc`` (one of several
    samples), ``X.<suffix>`` (``X_000.<suffix>`` first when it exists); None when neither exists.

    Args:
        suffix: ``".pdb"`` (the topology) or ``".json"`` (the summary).
    """
    stem = Path(trajectory).with_suffix("")
    candidates = [stem] + ([stem.with_name(stem.name[:-4])] if re.fullmatch(r".+_\d{3}", stem.name) else [])
    return next((p for p in (Path(f"{c}{suffix}") for c in candidates) if p.exists()), None)


def check_outputs(paths: list[Path], force: bool, where: str | Path) -> None:
    """Before any work: refuse to overwrite an existing file of ``paths`` unless ``force``, and check that
    each one's folder exists or can be made, and can be written.

    Raises:
        HemeplmError: naming ``where`` (the output the user gave) and the problem.
    """
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not force:
        raise HemeplmError(f"would overwrite {', '.join(existing)}; pass --force to replace them", where)
    for folder in sorted({Path(p).absolute().parent for p in paths}):
        present = next(p for p in (folder, *folder.parents) if p.exists())
        if not present.is_dir():
            raise HemeplmError(f"cannot write outputs: {present} is a file, not a folder", where)
        if not os.access(present, os.W_OK | os.X_OK):
            raise HemeplmError(f"cannot write outputs: {present} is not writable", where)
