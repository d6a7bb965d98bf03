"""Calibration of the per-frame confidence score of generated trajectories against their per-frame error.

``sample.py`` writes, per sample and frame, an uncertainty in Å (higher = less
confident; :mod:`hemeplm.generate.confidence`) into the summary JSON beside its
trajectories (``uncertainty_A``). ``hemeplm evaluate`` reads it for every
generated (and ``--prior``) file and measures how well it ranks the frames by
their error against the reference MD. A generated frame i of a trajectory is
paired with the reference frame at the same time (i × the generated frame
spacing) in the reference trajectory paired with it (the k-th when there are
as many reference as generated trajectories, else the only one); frame 0 (the
given start), any other given (conditioned) frame and frames without a reference
frame at their time are left out.
``info.confidence`` says where the scores came from, or why there are none.

| key | definition | better |
|---|---|---|
| ``confidence_spearman_ligand_rmsd`` | Spearman ρ between the per-frame uncertainty and the ligand heavy-atom RMSD (Å, no fit on the ligand, each pair superposed on Cα) to the paired reference frame, frames pooled over trajectories; null without ligand or uncertainties, or when either is constant | higher |
| ``confidence_spearman_violations`` | the same against the frame's violations: clashes plus bonds more than 0.1 Å from the reference's mean length | higher |
| ``lead_time_spearman_ligand_rmsd`` | ``confidence_spearman_ligand_rmsd`` with the frame's index in place of the uncertainty: what the time since the start alone tells, for comparison | — |
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError
from hemeplm.evaluate.checks import violations_per_frame
from hemeplm.evaluate.stats import spearman
from hemeplm.evaluate.trajectory import Reference, ligand_rmsd
from hemeplm.io import sample_output

KEYS = ("confidence_spearman_ligand_rmsd", "confidence_spearman_violations", "lead_time_spearman_ligand_rmsd")


def read_uncertainty(files: list[str | Path], frames: list[int]) -> tuple[list[np.ndarray] | None, str]:
    """Per-frame uncertainties of generated trajectory files from the sample summaries beside them.

    Args:
        files: trajectory files; frames: their frame counts.
    Returns:
        per file, (F_s,) uncertainty in Å (None when a file has none), and a sentence for ``info.confidence``.
    Raises:
        HemeplmError: naming a summary that is not readable JSON.
    """

    found, summaries = [], {}
    for f, n in zip(files, frames):
        path = sample_output(f, ".json")
        if path is None:
            return None, f"none: no sample summary (JSON) beside {f}"
        if str(path) not in summaries:  # the samples of one sample.py run share their summary
            try:
                summaries[str(path)] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise HemeplmError(f"not a readable sample summary: {exc}", path) from exc
        summary = summaries[str(path)]
        names = [Path(p).name for p in summary.get("trajectories", [])]
        if "uncertainty_A" not in summary or Path(f).name not in names:
            return None, f"none: {path} has no uncertainty_A for {Path(f).name}"
        values = np.asarray(summary["uncertainty_A"][names.index(Path(f).name)], dtype=np.float64)
        if len(values) != n:
            return None, f"none: {path} has {len(values)} uncertainties for the {n} frames of {f}"
        found.append(values)
    return found, f"uncertainty_A from {', '.join(sorted(summaries))}"


def confidence_metrics(segments: list[np.ndarray], uncertainty: list[np.ndarray] | None, ref: Reference,
                       ref_segments: list[np.ndarray], dt_ps: float, scored: list[np.ndarray] | None = None) -> dict:
    """The module table's Spearman ρ for one ensemble.

    Args:
        segments: per generated trajectory, (F_s, A, 3) Å in the common Cα frame; uncertainty: per
            trajectory, (F_s,) Å, or None; ref_segments: per reference trajectory, (F'_r, A, 3) Å;
        dt_ps: time between generated frames (the reference's: ``ref.dt_ps``).
        scored: optional, per trajectory, (F_s,) bool: the generated frames (the others are left out).
    Returns:
        the :data:`KEYS`, NaN where undefined.
    """
    out = dict.fromkeys(KEYS, math.nan)
    if uncertainty is None or not (len(ref_segments) in (1, len(segments))):
        return out
    score, rmsd, bad, lead = [], [], [], []
    for k, (seg, u) in enumerate(zip(segments, uncertainty)):
        paired = ref_segments[k if len(ref_segments) == len(segments) else 0]
        at = np.arange(1, len(seg)) * dt_ps / ref.dt_ps
        index = np.round(at).astype(np.int64)
        keep = (np.abs(at - index) < 1e-3) & (index < len(paired))
        if scored is not None:
            keep &= np.asarray(scored[k], dtype=bool)[1:]
        frames = seg[1:][keep]
        score.append(u[1:][keep])
        lead.append(np.flatnonzero(keep) + 1)
        bad.append(violations_per_frame(frames, ref.geom, ref.bond_lengths))
        if len(ref.geom.ligand):
            rmsd.append(ligand_rmsd(frames, paired[index[keep]], ref.geom))
    if not sum(map(len, score)):
        return out
    score = np.concatenate(score)
    out["confidence_spearman_violations"] = spearman(score, np.concatenate(bad))
    if rmsd:
        rmsd = np.concatenate(rmsd)
        out.update(confidence_spearman_ligand_rmsd=spearman(score, rmsd),
                   lead_time_spearman_ligand_rmsd=spearman(np.concatenate(lead), rmsd))
    return out
