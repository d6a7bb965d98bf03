"""Featurise a system once (cached on disk), cut windows, split by time.

:func:`featurize` turns topology + trajectories into a plain dict of arrays
(the *system*: token layout, atom features, ligand chemistry, coordinates,
energies, forces) and caches it under a key made of the inputs' paths, sizes,
modification times and the options. :class:`WindowDataset` serves windows of
``T`` frames at lag ``k`` from one chronological split (70/15/15 within each
segment, earliest frames for training), never crossing a segment or split
boundary. Whole replicas kept for testing (``data.held_out``) are never loaded here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hemeplm.errors import HemeplmError, require_file
from hemeplm.data.parameters import residue_labels
from hemeplm.io import load_plain, to_numpy, to_plain
from hemeplm.data.ligand import ELEMENTS, element_index, ligand_features, N_LIGAND_FEATURES
from hemeplm.data.load import ENERGY_FILE, load_system
from hemeplm.data.numbering import kept_insertion_codes, topology_pdb
from hemeplm.data.residues import N_RES_TYPES
from hemeplm.data.internal import build_internal
from hemeplm.data.tokens import build_layout

log = logging.getLogger(__name__)
FEATURE_VERSION = 7
#: training frames (evenly spaced) over which the fold pairs' distance spread is measured
FOLD_FRAMES = 200
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """Where the MD is and how it is cut."""

    topology: str = "data/t4l_l99a_xylene/complex.prmtop"
    trajectories: list[str] = field(default_factory=lambda: ["data/t4l_l99a_xylene/labelled/traj/traj.dcd"])
    ligand: str | None = None
    ligand_file: str | None = None
    ligand_group: int = 14  # ligand atoms pooled per token (1: one token per atom; at most the token width)
    hydrogens: bool = False
    plm_embeddings: str | None = None
    window: int = 8
    lag: int = 1
    #: more lags (frames of the MD) to train on beside ``lag``: the model is then told each window's lag (in ps)
    #: and samples at any of them (``sample.py --lag-ps``; ``lag`` stays its default). Empty: ``lag`` alone, and
    #: the model is not told it. A lag whose window is longer than a segment's split has no windows there.
    lags: list[int] = field(default_factory=list)
    stride: int = 1
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    # whole replicas never trained or validated on (not loaded by training): tools/demo.py tests on the first
    held_out: list[str] = field(default_factory=list)
    cache_dir: str = ".cache/hemeplm"
    truncated: str = "error"  # a DCD/XTC cut mid-frame: "error", or "warn" and use its complete frames
    timestep_ps: float | None = None  # time between saved frames; None: from the files (a DCD carries none)
    # files giving the topology its partial charges: a GROMACS .top for a .gro, OpenMM XML force fields for a PDB
    forcefield: list[str] = field(default_factory=list)

    @property
    def window_span(self) -> int:
        """Saved frames one window covers: ``window`` frames ``lag`` apart."""
        return self.span_at(self.lag)

    def span_at(self, lag: int) -> int:
        """Saved frames one window covers at ``lag``."""
        return (self.window - 1) * lag + 1

    @property
    def training_lags(self) -> list[int]:
        """The lags windows are cut at: ``lag`` and ``lags``, ascending."""
        return sorted({self.lag, *self.lags})


def _stamp(path: str | Path) -> list:
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def cache_key(cfg: DataConfig) -> str:
    """Hash of the inputs (paths, sizes, mtimes) and every option that changes the features."""
    files = [cfg.topology, *cfg.trajectories]
    # force-field files on disk are stamped; OpenMM's own XML files are named in the payload
    extra = [f for f in (cfg.ligand_file, cfg.plm_embeddings) if f] + [f for f in cfg.forcefield if Path(f).is_file()]
    energy = [Path(t).parent / ENERGY_FILE for t in cfg.trajectories]
    payload = {"v": FEATURE_VERSION, "files": [_stamp(require_file(f)) for f in files + extra],
               "energy": [_stamp(e) for e in energy if e.exists()], "ligand": cfg.ligand,
               "ligand_group": cfg.ligand_group, "hydrogens": cfg.hydrogens, "truncated": cfg.truncated,
               "timestep_ps": cfg.timestep_ps, "forcefield": cfg.forcefield}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _load_plm(path: str | Path, n_residues: int) -> np.ndarray:
    p = require_file(path)
    try:
        arr = torch.load(p, map_location="cpu", weights_only=True) if p.suffix == ".pt" else np.load(p)
    except Exception as exc:
        raise HemeplmError(f"cannot read embeddings: {exc}", p) from exc
    arr = np.asarray(arr.numpy() if isinstance(arr, torch.Tensor) else arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n_residues:
        raise HemeplmError(f"embeddings have shape {arr.shape}; expected ({n_residues}, D), one row per residue", p)
    if not np.isfinite(arr).all():
        raise HemeplmError("embeddings contain NaN or infinite values", p)
    return arr


def build_features(cfg: DataConfig) -> dict:
    """Load and featurise (no cache). See :func:`featurize` for the keys."""
    width = 27 if cfg.hydrogens else 14
    if not 1 <= cfg.ligand_group <= width:
        raise HemeplmError(f"data.ligand_group={cfg.ligand_group}: must be between 1 and the token width, {width}")
    system = load_system(cfg.topology, cfg.trajectories, ligand=cfg.ligand, hydrogens=cfg.hydrogens,
                         truncated=cfg.truncated, timestep_ps=cfg.timestep_ps, forcefield=cfg.forcefield)
    if system.charges is None:
        log.warning("%s: no partial charges: charge features are zero (ligand charges come from data.ligand_file "
                    "or RDKit Gasteiger); data.forcefield can give them (see docs/design.md, Data)", cfg.topology)
    top = system.topology
    first = system.segments[0][0]
    try:
        layout = build_layout(top, system.ligand, first, width=width, ligand_group=cfg.ligand_group)
    except ValueError as exc:
        raise HemeplmError(str(exc), cfg.topology) from exc
    n = top.n_atoms
    lig = ligand_features(system.full_topology, system.full_ligand, system.full_first_frame,
                          system.source_index[system.ligand], charges=system.full_charges,
                          ligand_file=cfg.ligand_file)
    is_lig = np.zeros(n, bool)
    is_lig[system.ligand] = True
    element = np.array([element_index(a.element.symbol if a.element else "C") for a in top.atoms], np.int64)
    element[system.ligand] = lig["element"]
    atom_type = np.where(is_lig, N_RES_TYPES * width, layout.res_type[layout.atom_token] * width + layout.atom_slot)
    lig_feat = np.zeros((n, N_LIGAND_FEATURES), np.float32)
    lig_feat[system.ligand] = lig["features"]
    charge = np.zeros(n, np.float32) if system.charges is None else system.charges.astype(np.float32)
    charge[system.ligand] = lig["charge"]
    bonds = {(a.index, b.index) for a, b in top.bonds}
    bonds |= {(int(system.ligand[i]), int(system.ligand[j])) for i, j in lig["bonds"].T}
    bonds = np.asarray(sorted(bonds), np.int64).reshape(-1, 2).T
    n_res = len(layout.frame_atoms)
    residue = np.array([a.residue.index for a in top.atoms], np.int64)
    protein_residue, interaction_residues = residue_labels(top)
    symbols = [ELEMENTS[e] if e < len(ELEMENTS) else "C" for e in element]
    train = np.concatenate([seg[slice(*split_bounds(len(seg), cfg.split)[0])] for seg in system.segments])
    train = train[np.linspace(0, len(train) - 1, min(len(train), FOLD_FRAMES)).round().astype(int)]
    internal = build_internal(asdict(layout), bonds, residue, np.concatenate([first[None], train]), symbols)
    return {
        "version": FEATURE_VERSION,
        "layout": asdict(layout),
        "internal": asdict(internal),
        "n_atoms": n,
        "atom_names": [a.name for a in top.atoms],
        "residue_names": [a.residue.name for a in top.atoms],
        "element": element,
        "atom_type": atom_type.astype(np.int64),
        "is_ligand": is_lig,
        "polar": np.isin(element, [element_index("N"), element_index("O")]),
        "residue": residue,
        "ligand_features": lig_feat,
        "charge": charge,
        "charge_source": lig["charge_source"],
        "bonds": bonds,
        "plm": None if cfg.plm_embeddings is None else _load_plm(cfg.plm_embeddings, n_res),
        "segments": system.segments,  # float32 already
        "energies": system.energies,
        "forces": system.forces,
        "interactions": system.interactions,
        "protein_residue": protein_residue,
        "interaction_residues": interaction_residues,
        "files": system.files,
        "timestep_ps": system.timestep_ps,
        "topology_pdb": topology_pdb(top, first, kept_insertion_codes(cfg.topology, system.full_topology, system.source_index,
                                                                      system.topology)),
    }


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def featurize(cfg: DataConfig, use_cache: bool = True) -> dict:
    """Featurised system, from the cache when the inputs and options are unchanged.

    Keys: ``layout`` (see :class:`~hemeplm.data.tokens.TokenLayout`), ``internal`` (see
    :class:`~hemeplm.data.internal.InternalLayout`), ``n_atoms``,
    per atom (A,): ``element``, ``atom_type``, ``is_ligand``, ``polar``, ``residue``,
    ``charge``, ``ligand_features`` (A, F); ``bonds`` (2, B); ``plm`` (R, D) or None;
    ``segments`` list of (F_s, A, 3) Å; ``energies`` list of (F_s,) kcal/mol or None;
    ``forces`` list of (F_s, A, 3) kcal/mol/Å or None; ``interactions`` list of (F_s, R)
    kcal/mol or None; ``protein_residue`` (A,) protein residue index (-1 elsewhere) and
    ``interaction_residues`` (R,) their names (``ALA99``); ``timestep_ps``; ``files``;
    ``topology_pdb`` (PDB text of the kept atoms).
    The cache holds plain data only (arrays as tensors, :mod:`hemeplm.io`) and is read with
    ``weights_only=True``: a cache file holding other Python objects is a :class:`HemeplmError`.
    A failed load writes nothing; two processes building the same key wait on a lock (the
    second one reads what the first wrote); a cache that cannot be written (full disk) is
    skipped with a warning.
    """
    if not use_cache:
        return build_features(cfg)
    key = cache_key(cfg)
    path = Path(cfg.cache_dir) / f"{key}.pt"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            try:
                return to_numpy(load_plain(path, "feature cache", "delete it and it is rebuilt"))
            except HemeplmError:
                raise
            except Exception as exc:
                log.warning("%s: unreadable cache (%s); rebuilding", path, exc)
        feats = build_features(cfg)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(to_plain(feats), tmp)
            os.replace(tmp, path)
            log.info("features cached in %s", path)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            log.warning("%s: cannot write the feature cache (%s); continuing without it", path, exc)
    return feats


def split_bounds(n_frames: int, fractions: list[float]) -> list[tuple[int, int]]:
    """Chronological [start, stop) frame ranges of train/val/test in one segment."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise HemeplmError(f"data.split must be three non-negative fractions summing to 1, got {fractions}")
    cuts = np.round(np.cumsum([0.0, *fractions]) * n_frames).astype(int)
    return [(int(cuts[i]), int(cuts[i + 1])) for i in range(3)]


def window_starts(cfg: DataConfig, segment_lengths: list[int], files: list[str], split: str
                  ) -> list[tuple[int, int, int]]:
    """``(segment, start, lag)`` of every window of ``split``, at every lag of ``cfg.training_lags``.

    A window holds frames ``start, start+lag, ..., start+(window-1)*lag``; it never crosses a segment or
    split boundary. A segment shorter than one window at ``data.lag`` is an error naming its file; at a longer
    lag of ``data.lags`` it just has no windows.
    """
    out = []
    for s, n in enumerate(segment_lengths):
        if n < cfg.window_span:
            raise HemeplmError(f"has {n} frames, shorter than one window ({cfg.window} frames at lag {cfg.lag} "
                               f"= {cfg.window_span} frames)", files[s])
        lo, hi = split_bounds(n, cfg.split)[SPLITS.index(split)]
        for lag in cfg.training_lags:
            out += [(s, i, lag) for i in range(lo, hi - cfg.span_at(lag) + 1, cfg.stride)]
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Windows of one split, at every training lag.

    Item: ``coords`` (T, A, 3) Å, ``segment``, ``start`` and ``lag`` () int64 (the window's frame spacing in
    frames of the MD); with ``before`` = L > 0 also ``before`` (L, A, 3), the L frames before the window at
    its lag, and ``has_before`` () bool, whether they all lie in the window's split (where they do not,
    ``before`` repeats the window's first frame).
    """

    def __init__(self, feats: dict, cfg: DataConfig, split: str, before: int = 0):
        self.feats, self.cfg, self.split, self.before = feats, cfg, split, before
        self.index = window_starts(cfg, [len(s) for s in feats["segments"]], feats["files"], split)
        self.split_start = [split_bounds(len(s), cfg.split)[SPLITS.index(split)][0] for s in feats["segments"]]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s, start, lag = self.index[i]
        segment = self.feats["segments"][s]
        frames = np.arange(self.cfg.window) * lag + start
        item = {"coords": torch.from_numpy(segment[frames]), "segment": torch.tensor(s), "start": torch.tensor(start),
                "lag": torch.tensor(lag)}
        if self.before > 0:
            earlier = start - np.arange(self.before, 0, -1) * lag
            has = bool(earlier[0] >= self.split_start[s])
            item["before"] = torch.from_numpy(segment[earlier if has else np.full(self.before, start)])
            item["has_before"] = torch.tensor(has)
        return item


class LabelledFrames(torch.utils.data.Dataset):
    """Single frames of one split that carry energy labels (segments without labels are skipped).

    Item: ``coords`` (A, 3) Å, ``energy`` () kcal/mol, ``forces`` (A, 3) kcal/mol/Å,
    ``interaction`` (R,) kcal/mol (zeros without interaction labels) and ``has_interaction`` () bool.
    """

    def __init__(self, feats: dict, cfg: DataConfig, split: str):
        self.feats = feats
        self.index = [(s, f) for s, seg in enumerate(feats["segments"]) if feats["energies"][s] is not None
                      for f in range(*split_bounds(len(seg), cfg.split)[SPLITS.index(split)])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        s, f = self.index[i]
        inter = self.feats["interactions"][s]
        n_res = len(self.feats["interaction_residues"])
        return {"coords": torch.from_numpy(self.feats["segments"][s][f]),
                "energy": torch.tensor(float(self.feats["energies"][s][f])),
                "forces": torch.from_numpy(self.feats["forces"][s][f]),
                "interaction": torch.zeros(n_res) if inter is None else torch.from_numpy(inter[f]).float(),
                "has_interaction": torch.tensor(inter is not None)}
