"""Checkpoints: one file that rebuilds the model on its own.

A checkpoint holds ``format_version``, the resolved ``config``, the system's
static description (``static``), ``model`` and ``ema`` state dicts, the
``optimizer`` state, ``step``, ``rng`` states and the ``metrics`` history, all
plain data (tensors, numbers, strings, lists, dicts; :mod:`hemeplm.io`), and
is read with ``torch.load(..., weights_only=True)``: a file holding any other
Python object is refused, so loading a checkpoint cannot run code. It is written to a temporary file in the same folder, fsynced and renamed over
the old one, so a kill (or a full disk) during saving leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hemeplm.config import Config, from_dict
from hemeplm.errors import HemeplmError
from hemeplm.io import load_plain, to_plain
from hemeplm.models.surrogate import HemePLM

#: 3: plain data only (read with weights_only=True); 2: internal coordinates (rigid bodies + torsions),
#: numpy arrays inside; 1: generated per-atom displacements
FORMAT_VERSION = 3
REQUIRED_KEYS = ("format_version", "config", "static", "model", "ema", "step")
#: state dicts, stored as torch gives them (tensors and plain values already)
STATE_KEYS = ("model", "ema", "optimizer")
#: denoiser config keys added after format 3 came in, and the value that rebuilds a checkpoint saved before each
#: (the junction refiner, the ensemble offset): such a checkpoint is built without them
LATER_DENOISER_KEYS = {"refine_steps": 0, "ensemble_offset": False}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Atomically write ``payload`` (plus ``format_version``) to ``path``.

    ``payload`` holds plain data; numpy arrays and scalars in it are stored as tensors and
    Python numbers (:func:`~hemeplm.io.to_plain`), anything else is a TypeError. A write that fails (e.g. a full disk) removes its temporary file, leaves the
    previous checkpoint as it was and raises :class:`HemeplmError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {"format_version": FORMAT_VERSION, **{k: v if isinstance(v, dict) and k in STATE_KEYS else to_plain(v)
                                                    for k, v in payload.items()}}
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise HemeplmError(f"cannot write checkpoint (disk full?); the previous one is kept: {_one_line(exc)}",
                           path) from exc
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # make the rename itself durable
    finally:
        os.close(folder)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint; errors name the file and the problem, on one line.

    The returned dict also holds ``path`` (the file), so that later errors can name it.
    """
    p = Path(path)
    if not p.is_file():
        raise HemeplmError("checkpoint not found", p)
    try:
        ckpt = load_plain(p, "checkpoint", "a checkpoint from an older HemePLM cannot be read: retrain it",
                          map_location)
    except HemeplmError:
        raise
    except Exception as exc:  # a truncated or garbage file fails anywhere inside unpickling
        raise HemeplmError(f"not a readable checkpoint (truncated or corrupted?): {_one_line(exc)}", p) from exc
    if not isinstance(ckpt, dict):
        raise HemeplmError("not a HemePLM checkpoint (no dictionary inside)", p)
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        older = isinstance(version, int) and version < FORMAT_VERSION
        raise HemeplmError(f"checkpoint format version {version!r}; this HemePLM reads version {FORMAT_VERSION}"
                           + ("; the checkpoint is from an older HemePLM whose model generated other values: "
                              "retrain it" if older else ""), p)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise HemeplmError(f"checkpoint lacks {', '.join(missing)}", p)
    return {**ckpt, "path": str(p)}


def load_state(module: torch.nn.Module, state: dict, what: str, path: str | Path | None) -> None:
    """``module.load_state_dict(state)``; a mismatch is a HemeplmError naming the checkpoint."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        mine = module.state_dict()
        ours = {k: v.shape for k, v in mine.items() if k.startswith("refiner.")}
        theirs = {k: v.shape for k, v in state.items() if k.startswith("refiner.")}
        readings = lambda shapes: tuple(shapes.get("refiner.features.weight", ()))[1:]  # noqa: E731 (the first design read 14)
        weights = what in ("model", "ema")
        hints = []
        if weights and ours and not theirs:
            hints.append("trained before the junction refiner: resume it with denoiser.refine_steps=0")
        elif weights and ours and theirs and readings(theirs) != readings(ours):
            hints.append("trained with an earlier design of the junction refiner: retrain it")
        if weights and "ensemble_mean" in mine and "ensemble_mean" not in state:
            hints.append("trained before the ensemble offset: resume it with denoiser.ensemble_offset=false")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise HemeplmError(f"its {what} state does not fit this model (was the config changed?){hint}: "
                           f"{_one_line(exc)[:300]}", path) from exc


def build_model(ckpt: dict, use_ema: bool = True):
    """Rebuild :class:`~hemeplm.models.surrogate.HemePLM` from a loaded checkpoint alone.

    Returns:
        (model in eval mode, Config).
    """

    saved = ckpt["config"]
    # denoiser keys added since format 3, at the value that builds a model trained before them (without them)
    earlier = {k: v for k, v in LATER_DENOISER_KEYS.items() if k not in saved.get("denoiser", {})}
    cfg: Config = from_dict({**saved, "denoiser": {**saved.get("denoiser", {}), **earlier}})
    model = HemePLM(cfg, ckpt["static"])
    which = "ema" if use_ema else "model"
    load_state(model, ckpt[which], which, ckpt.get("path"))
    return model.eval(), cfg
