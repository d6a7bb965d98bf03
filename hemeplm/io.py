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
import pickletools
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from hemeplm.errors import HemeplmError

PLAIN = "tensors, numbers, strings, lists and dicts"
#: how torch's safe unpickler says it refused a file: it names the class or function it would not build
#: ("Unsupported global: GLOBAL io.open", "unsupported GLOBAL posix.system whose module posix is blocked"),
#: or the pickle instruction it does not run ("Unsupported operand 149")
_REFUSED = "Weights only load failed"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand (\d+)")


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


def _pickled_globals(path: str | Path) -> list[str]:
    """The classes and functions a pickle (a file torch.save wrote, or a bare pickle) names, read with
    :mod:`pickletools` (which builds and runs nothing); [] for bytes that are not one whole pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = Path(path).read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a whole pickle (garbage, or cut short): nothing it names can be trusted
        return []
    return found


def load_plain(path: str | Path, what: str, advice: str, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)``.

    Raises:
        HemeplmError: naming ``path``, when torch's safe loader refuses the file because it holds other
            Python objects: nothing of it is built, so nothing in it runs. The message says what it is
            (a ``what``, e.g. "checkpoint", that holds Python objects, refused without running them), names
            the first object, and ends with ``advice``; it does not pass on torch's advice to load the file
            with ``weights_only=False``.
        pickle.UnpicklingError: for bytes the safe loader cannot read that name no Python object (a
            truncated or corrupted file), with the instruction it stopped at, again without torch's advice.
        Exception: whatever else ``torch.load`` raises for an unreadable file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL.search(text)
        if found is None and _REFUSED not in text:
            raise  # not a refusal of the safe loader: an unreadable pickle, nothing was run
        named = [found.group(1)] if found else _pickled_globals(path)
        if not named:
            operand = _OPERAND.search(text)
            raise pickle.UnpicklingError("the safe loader stopped at " + (
                f"pickle instruction {operand.group(1)}" if operand else "an instruction it does not read")) from None
        raise HemeplmError(f"refused: this {what} holds Python objects other than {PLAIN} ({named[0]}); refused "
                           f"without running them (loading them could run code); {advice}", path) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_save(traj, path: str | Path, **kw) -> None:
    """Save an mdtraj Trajectory to ``path`` (its format from the suffix: XTC, DCD, PDB...; ``kw`` to mdtraj's
    writer) through a temporary file in the same folder with the same suffix, and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        traj.save(str(tmp), force_overwrite=True, **kw)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (the temporary file is removed
    when writing fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
