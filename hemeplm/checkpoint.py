"""Checkpoints: one file that rebuilds the model on its own.

A checkpoint holds ``format_version``, the resolved ``config``, the system's
static description (``static``), ``model`` and ``ema`` state dicts, the
``optimizer`` state, ``step``, ``rng`` states and the ``metrics`` history. It
is written to a temporary file in the same folder, fsynced and renamed over
the old one, so a kill during saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from .config import Config, from_dict
from .errors import HemeplmError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "static", "model", "ema", "step")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Atomically write ``payload`` (plus ``format_version``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format_version": FORMAT_VERSION, **payload}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint; errors name the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise HemeplmError("checkpoint not found", p)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise HemeplmError(f"not a readable checkpoint (truncated or corrupted?): {exc}", p) from exc
    if not isinstance(ckpt, dict):
        raise HemeplmError("not a HemePLM checkpoint (no dictionary inside)", p)
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise HemeplmError(f"checkpoint format version {ckpt.get('format_version')!r}; this HemePLM reads "
                           f"version {FORMAT_VERSION}", p)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise HemeplmError(f"checkpoint lacks {', '.join(missing)}", p)
    return ckpt


def build_model(ckpt: dict, use_ema: bool = True):
    """Rebuild :class:`~hemeplm.models.hemeplm.HemePLM` from a loaded checkpoint alone.

    Returns:
        (model in eval mode, Config).
    """
    from .models.hemeplm import HemePLM

    cfg: Config = from_dict(ckpt["config"])
    model = HemePLM(cfg, ckpt["static"])
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.eval(), cfg
