"""Trajectory metrics: generated ensembles measured against the reference MD.

:func:`fit_reference` fits TICA on and measures the reference ensemble once (:class:`Reference`);
:func:`compare` measures one ensemble against it (:class:`Comparison`), the validity checks of
:mod:`hemeplm.evaluate.checks` included. Coordinates are Å in the common Cα frame.

What a task gave is not scored. :func:`compare` takes, per trajectory, which frames were generated
(``scored``: ``hemeplm evaluate`` leaves out a forecast's frame 0, a transition path's two end frames and
every k-th frame of an upsampling, from the sample summary's ``conditioned_frames``) and which atoms
(``atoms``: the inpainted atoms of ``--task inpaint``, whose protein is given). Every metric is computed on
the scored frames only; with ``atoms``, a torsion, residue (RMSF) or validity term counts only with a
generated atom among its atoms, so an inpainting's torsion, TICA, RMSF and protein-only validity metrics
are null. Time series (TIC1 decorrelation, kinetics) are cut into the runs of consecutive scored
frames (:func:`scored_runs`; an upsampling's runs are its k-1 generated frames between given ones).

TICA is fitted only when the reference holds at least 4 time-lagged frame
pairs (t, t + lag), pooled over its trajectories, per TICA feature. Below that
the instantaneous covariance C00 that TICA whitens with is rank-deficient
(pairs ≤ features) or nearly so: for independent samples its smallest
eigenvalue shrinks by (1 − √(features / pairs))² (Marchenko–Pastur), which at
4 pairs per feature still leaves 1/4, so whitening amplifies no direction by
more than 2×; correlated MD frames hold fewer independent samples, so this is
a minimum, not a guarantee. When TICA is skipped, ``tica_jsd``,
``tic1_decorrelation_ps`` and the ``tps_*`` metrics are null in every column,
there is no ``tica_fes.png``, and ``info.tica`` (and, for ``--task tps``,
``info.tps``) says why; otherwise ``info.tica`` says what TICA was fitted on.

Trajectory metrics (JSD = Jensen–Shannon divergence, base 2, in 0..1); with frame weights
(:func:`compare`'s ``weights``, ``hemeplm evaluate --weights``) the histograms, RMSF, contact
frequencies and ligand RMSD mean and median are weighted, the validity checks and the
decorrelation time are not:

| key | definition | better |
|---|---|---|
| ``torsion_jsd`` | mean over all phi, psi, chi1–4 torsions (omega left out) of the JSD between generated and reference histograms (36 bins over −π..π), all frames pooled | lower |
| ``torsion_jsd_<type>`` | the same mean over one type: phi, psi, chi1, chi2, chi3, chi4 | lower |
| ``tica_jsd`` | JSD of the 2-D histograms (30 × 30 bins spanning the reference's range; points outside fall in the edge bins) of the first two TICA components; TICA (deeptime, kinetic map) fitted on the reference's sin/cos torsion features (the 256 of largest reference variance; deeptime's eigensolver is cubic in features) at lag ``--lag-ps`` (default: one frame); null when the reference has fewer than 4 time-lagged frame pairs per feature (``info.tica``) | lower |
| ``rmsf_pearson`` | Pearson r between per-residue Cα RMSF (Å, all frames of an ensemble pooled, superposed on Cα) of generated and reference; null when one is constant | higher |
| ``contact_jsd`` | JSD between per-residue protein–ligand contact frequencies (fraction of frames with any protein–ligand heavy-atom pair within 4.5 Å), each vector normalised to sum 1; null without ligand | lower |
| ``contact_pearson`` | Pearson r of the same contact-frequency vectors; null without ligand | higher |
| ``ligand_rmsd_mean_A``, ``ligand_rmsd_median_A`` | ligand heavy-atom RMSD (Å, no fit on the ligand) to the reference after superposing protein Cα: generated frame i against reference frame i when both have the same number of frames (each pair superposed on Cα), else against the nearest reference frame in the common Cα frame (``info.ligand_rmsd_pairing``); null without ligand | lower |
| ``ca_rmsd_end_A`` | Cα RMSD (Å, superposed on Cα) from each trajectory's first frame over the frames in the last :data:`END_FRACTION` of its time (the shortest trajectory's span, the same for every trajectory), pooled; the reference's own over the same span is ``info.reference.ca_rmsd_end_A`` (null when no reference trajectory is that long) | closer to reference |
| ``ca_rg_change_end_A`` | over the same frames, the change of the Cα radius of gyration (Å) from each trajectory's first frame, pooled: a protein that swells (or unfolds) grows it; the reference's own is ``info.reference.ca_rg_change_end_A`` | closer to reference |
| ``pocket_kept_end_fraction`` | over the same frames, the fraction of the first frame's pocket residues (a heavy atom within 4.5 Å of a ligand heavy atom) still in contact with the ligand; null without ligand | higher |
| ``tic1_decorrelation_ps`` | time (ps) at which the autocorrelation of TIC1 (pooled over trajectories) first falls below 1/e, linearly interpolated; null if it does not within half the longest trajectory or TIC1 is constant, or when TICA is skipped (as ``tica_jsd``); the reference's value is ``info.reference.tic1_decorrelation_ps`` | closer to reference |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError
from hemeplm.evaluate.checks import bond_lengths, validity
from hemeplm.evaluate.geometry import TORSION_TYPES, Geometry
from hemeplm.evaluate.stats import binned, decorrelation_time, jensen_shannon, pearson, weighted_median
from hemeplm.geometry.torsion import dihedrals
from hemeplm.geometry.rigid import superposition


TORSION_BINS = 36
TICA_BINS = 30
#: TICA uses at most this many sin/cos torsion features, those of largest reference variance
TICA_MAX_FEATURES = 256
#: TICA is fitted only with at least this many time-lagged reference frame pairs per feature (module docstring)
TICA_PAIRS_PER_FEATURE = 4
CONTACT_CUTOFF_A = 4.5
#: ``ca_rmsd_end_A`` and ``pocket_kept_end_fraction`` average over the last this fraction of the time span
END_FRACTION = 0.1


def torsion_angles(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Dihedral angles (rad, in -π..π) of (F, A, 3) coordinates for (T, 4) atom quadruples -> (F, T)."""
    import torch

    return dihedrals(torch.from_numpy(np.asarray(x, dtype=np.float64)), torch.from_numpy(quads)).numpy()


def rmsf(x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Root-mean-square fluctuation (Å) about the mean of (F, K, 3) superposed coordinates -> (K,).

    Displacements from frame 0 are averaged (float64), so identical frames give exactly 0.
    ``weights``: optional (F,) non-negative frame weights (not all 0): the mean position and the
    mean square displacement about it are then weighted means, so all weight on one frame gives 0.
    """
    d = x.astype(np.float64) - x[0]
    if weights is None:
        return np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean(0))
    w = np.asarray(weights, dtype=np.float64)
    return np.sqrt(np.average(((d - np.average(d, axis=0, weights=w)) ** 2).sum(-1), axis=0, weights=w))


def contact_frequency(x: np.ndarray, geom: Geometry, cutoff: float = CONTACT_CUTOFF_A,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """Per-residue protein–ligand contact frequency.

    Args:
        x: (F, A, 3) Å.
        weights: optional (F,) non-negative frame weights (not all 0); None weighs every frame equally.
    Returns:
        (R,) fraction of frames (with ``weights``, weighted fraction) in which any heavy atom of the
        residue lies within ``cutoff`` Å of any ligand heavy atom.
    """
    from scipy.spatial import cKDTree

    keep = geom.residue_of >= 0
    atoms, res = geom.protein[keep], geom.residue_of[keep]
    counts = np.zeros(len(geom.ca))
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    for frame, wf in zip(x, w):
        dist, _ = cKDTree(frame[geom.ligand]).query(frame[atoms], distance_upper_bound=cutoff)
        counts[np.unique(res[np.isfinite(dist)])] += wf
    return counts / (len(x) if weights is None else w.sum())


def gyration_radius(x: np.ndarray) -> np.ndarray:
    """Radius of gyration (Å) of points (..., K, 3), unweighted -> (...)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(((x - x.mean(-2, keepdims=True)) ** 2).sum(-1).mean(-1))


def drift(segments: list[np.ndarray], geom: Geometry, dt_ps: float, span_ps: float,
          scored: list[np.ndarray] | None = None) -> dict:
    """How far trajectories have gone from their first frames by ``span_ps``: ``ca_rmsd_end_A``,
    ``ca_rg_change_end_A`` and ``pocket_kept_end_fraction`` (module table) over the frames at times in
    [(1 - :data:`END_FRACTION`) · span_ps, span_ps] of every trajectory at least that long.

    Args:
        segments: per trajectory, (F_s, A, 3) Å; dt_ps: time between their frames.
        scored: optional, per trajectory, (F_s,) bool: only these frames count (frame 0 is the start either way).
    Returns:
        the three metrics, NaN when no trajectory reaches ``span_ps`` (the pocket also without ligand).
    """
    last = int(round(span_ps / dt_ps))
    first = min(last, max(1, int(math.ceil((1 - END_FRACTION) * last - 1e-9))))
    rmsd, swell, kept = [], [], []
    for s, x in enumerate(segments):
        if last >= len(x):
            continue
        end = np.arange(first, last + 1)
        if scored is not None:
            end = end[np.asarray(scored[s], dtype=bool)[end]]
        if not len(end):
            continue
        start = x[0, geom.ca].astype(np.float64)
        ca = x[np.ix_(end, geom.ca)].astype(np.float64)  # (F, K, 3) the scored frames' Cα
        rot, trans = superposition(ca, start)
        moved = np.einsum("fkj,fij->fki", ca, rot) + trans[:, None]
        rmsd.append(np.sqrt(((moved - start) ** 2).sum(-1).mean(-1)))
        swell.append(gyration_radius(ca) - gyration_radius(start))
        if len(geom.ligand):
            pocket = contact_frequency(x[:1], geom) > 0
            if pocket.any():
                kept.append(np.full(len(end), contact_frequency(x[end], geom)[pocket].mean()))
    return {"ca_rmsd_end_A": float(np.concatenate(rmsd).mean()) if rmsd else math.nan,
            "ca_rg_change_end_A": float(np.concatenate(swell).mean()) if swell else math.nan,
            "pocket_kept_end_fraction": float(np.concatenate(kept).mean()) if kept else math.nan}


def window_swelling(x: np.ndarray, ca: np.ndarray, starts: list[int], given: int, window: int) -> dict:
    """Where a forecast made window by window (:meth:`~hemeplm.generate.sampler.Sampler.forecast`) changes its size:
    the mean change of the Cα radius of gyration from the last frame given to each window after the first (its
    predecessor's output) to the first frame the window generates, ``junction_rg_step_A``, and from there to the
    window's last frame, ``window_rg_step_A``, over ``junctions`` windows (NaN when none lies wholly in ``x``).

    Args:
        x: (F, A, 3) Å, one forecast; ca: (K,) indices of its Cα atoms.
        starts: the windows' first frames, in order; given: frames each window after the first is given;
        window: frames per window.
    """
    rg = gyration_radius(np.asarray(x)[:, ca])
    later = np.array([s for s in starts[1:] if s + window <= len(rg)], dtype=int)
    if not len(later):
        return {"junction_rg_step_A": math.nan, "window_rg_step_A": math.nan, "junctions": 0}
    first = later + given
    return {"junction_rg_step_A": float((rg[first] - rg[first - 1]).mean()),
            "window_rg_step_A": float((rg[later + window - 1] - rg[first]).mean()), "junctions": len(later)}


def rmsd_pairing(n_generated: int, n_reference: int) -> str:
    """How :func:`ligand_rmsd` pairs generated with reference frames, in words."""
    if n_generated == n_reference:
        return "frame i against reference frame i"
    return "nearest reference frame (the frame counts differ)"


def ligand_rmsd(gen: np.ndarray, ref: np.ndarray, geom: Geometry, index: np.ndarray | None = None) -> np.ndarray:
    """Ligand heavy-atom RMSD (Å) of generated frames to the reference, protein Cα superposed.

    Args:
        gen: (F, A, 3) and ref: (F', A, 3), both already in the common Cα frame.
        index: optional (F,) reference frame of each generated frame (the frames of a trajectory as long as
            the reference with its conditioned frames left out); None: frame i when F == F'.
    Returns:
        (F,) RMSD: frame i against reference frame ``index[i]`` (i when F == F'; each pair superposed on Cα),
        else against the nearest reference frame (:func:`rmsd_pairing`).
    """
    from scipy.spatial.distance import cdist

    lig, n_lig = geom.ligand, len(geom.ligand)
    if index is None and len(gen) == len(ref):
        index = np.arange(len(gen))
    if index is not None:
        out = np.empty(len(gen))
        for i, k in enumerate(index):
            rot, trans = superposition(gen[i:i + 1, geom.ca].astype(np.float64), ref[k, geom.ca].astype(np.float64))
            moved = gen[i, lig] @ rot[0].T + trans[0]
            out[i] = np.sqrt(((moved - ref[k, lig]) ** 2).sum(-1).mean())
        return out
    ref_lig = ref[:, lig].reshape(len(ref), -1).astype(np.float64)
    out = np.concatenate([cdist(chunk[:, lig].reshape(len(chunk), -1), ref_lig).min(1)
                          for chunk in np.array_split(gen, max(1, len(gen) // 256))])
    return out / math.sqrt(n_lig)


def transition_paths(labels: list[np.ndarray], end_states: list[int], scored: list[np.ndarray] | None = None) -> dict:
    """Success and length of transition paths over discrete states.

    Args:
        labels: per path, (F_s,) state of every frame; frame 0's is the start state.
        end_states: per path, the target state (the given end state, not the path's own last frame's).
        scored: per path, (F_s,) bool, its generated frames (None: all but frame 0): only they can leave the
            start state or arrive, so a path whose conditioned end frame alone reaches the end state fails.
    Returns:
        ``tps_success_fraction`` (paths that leave the state of frame 0 and later
        reach the end state, both in scored frames) and ``tps_path_frames_mean`` (frames from the last
        visit to the start state, frame 0 included, to the first arrival, over successful paths; NaN if none).
    """
    lengths = []
    for k, (lab, end) in enumerate(zip(labels, end_states)):
        ok = np.arange(len(lab)) > 0 if scored is None else np.asarray(scored[k], dtype=bool)
        left = np.flatnonzero((lab != lab[0]) & ok)
        if len(left) == 0:
            continue
        arrive = left[0] + np.flatnonzero((lab[left[0]:] == end) & ok[left[0]:])
        if len(arrive):
            lengths.append(int(arrive[0] - np.flatnonzero(lab[:arrive[0]] == lab[0])[-1]))
    return {"tps_success_fraction": len(lengths) / len(labels),
            "tps_path_frames_mean": float(np.mean(lengths)) if lengths else math.nan}


def scored_runs(series: list[np.ndarray] | None, scored: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """Per trajectory, its maximal runs of consecutive scored frames of at least 2 frames, in order (None stays None).

    Args:
        series: per trajectory, (F_s, ...) values; scored: per trajectory, (F_s,) bool (None: all frames).
    """
    if series is None or scored is None:
        return series
    runs = []
    for values, keep in zip(series, scored):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(keep, dtype=np.int8), [0]])))
        runs += [values[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]
    return runs


# ----------------------------------------------------------------------------- reference and ensembles

def _sin_cos(angles: np.ndarray) -> np.ndarray:
    """(F, T) angles -> (F, 2T) TICA features."""
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _tica_histogram(projections: list[np.ndarray], edges: list[np.ndarray],
                    weights: np.ndarray | None = None) -> np.ndarray:
    """Per trajectory (F_s, 2) TIC1/TIC2 -> (B1, B2) counts of all frames (with (ΣF_s,) ``weights``, their sums)."""
    return binned(np.concatenate(projections)[:, None], edges, weights)[0].reshape(len(edges[0]) - 1, -1)


@dataclass
class Reference:
    """Everything fitted on or measured in the reference ensemble.

    Attributes (F reference frames, T torsions, R residues, B bonds):
        geom: the system's :class:`Geometry`.
        frames: (F, A, 3) all reference frames, Å, common Cα frame.
        torsion_edges: (37,) bin edges (rad); torsion_hist: (T, 36) counts.
        tica: fitted deeptime TICA model, or None when skipped (too few reference frames);
        tica_features: indices of the sin/cos features it uses (or would use);
        tica_note: what TICA was fitted on, or ``"skipped: ..."`` and why (``info.tica``);
        tica_edges: two (31,) edge arrays; tica_hist: (30, 30) counts; both None when skipped.
        rmsf: (R,) Å; contacts: (R,) frequencies or None without ligand.
        bond_lengths: (B,) mean lengths, Å.
        step_sigma: (A,) per-atom, per-coordinate step standard deviation (Å) over one generated frame step.
        projections: per reference trajectory, (F_s, 2) TIC1/TIC2; None when TICA is skipped.
        dt_ps: time between reference frames; lag_frames: TICA lag.
    """

    geom: Geometry
    frames: np.ndarray
    torsion_edges: np.ndarray
    torsion_hist: np.ndarray
    tica: object | None
    tica_features: np.ndarray
    tica_note: str
    tica_edges: list | None
    tica_hist: np.ndarray | None
    rmsf: np.ndarray
    contacts: np.ndarray | None
    bond_lengths: np.ndarray
    step_sigma: np.ndarray
    projections: list | None
    dt_ps: float
    lag_frames: int


def fit_tica(features: list[np.ndarray], lag_frames: int) -> tuple[object | None, np.ndarray, str]:
    """TICA on the reference's sin/cos torsion features, if it has enough frames for them.

    Enough means at least :data:`TICA_PAIRS_PER_FEATURE` time-lagged frame pairs (t, t + lag),
    pooled over the trajectories, per feature used (why: module docstring).

    Args:
        features: per reference trajectory, (F_s, 2T) sin/cos features; lag_frames: TICA lag.
    Returns:
        the fitted deeptime TICA model (None when skipped), the indices of the (at most
        :data:`TICA_MAX_FEATURES`) features of largest variance it uses, and a sentence for
        ``info.tica``: what it was fitted on, or ``"skipped: ..."`` with the reason.
    """
    from deeptime.decomposition import TICA

    chosen = np.sort(np.argsort(-np.concatenate(features).var(0), kind="stable")[:TICA_MAX_FEATURES])
    pairs = sum(max(0, len(f) - lag_frames) for f in features)
    need = TICA_PAIRS_PER_FEATURE * len(chosen)
    counts = (f"{pairs} time-lagged frame pairs from {sum(map(len, features))} reference frames at a lag of "
              f"{lag_frames} frame{'s' * (lag_frames != 1)} for {len(chosen)} TICA features")
    if pairs < need:
        return None, chosen, (f"skipped: {counts}; need at least {need} ({TICA_PAIRS_PER_FEATURE} per feature) "
                              "for a well-conditioned covariance estimate")
    tica = TICA(lagtime=lag_frames, dim=2).fit([f[:, chosen] for f in features if len(f) > lag_frames])
    return tica.fetch_model(), chosen, f"fitted on {counts}"


def fit_reference(geom: Geometry, segments: list[np.ndarray], dt_ps: float, lag_frames: int, generated_dt_ps: float,
                  path: str | Path = "reference") -> Reference:
    """Fit TICA (when the reference is long enough, see :func:`fit_tica`) and measure the reference ensemble.

    The random-walk step variance is the per-atom variance of reference
    displacements over the number of frames nearest to ``generated_dt_ps``
    (at least one), scaled linearly in time to exactly ``generated_dt_ps``.

    Args:
        segments: per reference trajectory, (F_s, A, 3) Å in the common Cα frame.
        dt_ps: time between reference frames; lag_frames: TICA lag;
        generated_dt_ps: time between generated frames; path: named in errors.
    """
    step_frames = max(1, round(generated_dt_ps / dt_ps))
    moved = [s[step_frames:] - s[:-step_frames] for s in segments if len(s) > step_frames]
    if not moved:
        raise HemeplmError(f"no reference trajectory is longer than the generated step ({step_frames} frames)", path)
    step_var = sum((d.astype(np.float64) ** 2).sum((0, 2)) for d in moved) / (3 * sum(len(d) for d in moved))
    step_var *= generated_dt_ps / (step_frames * dt_ps)
    angles = [torsion_angles(s, geom.torsions) for s in segments]
    features = [_sin_cos(a) for a in angles]
    tica, chosen, note = fit_tica(features, lag_frames)
    projections = tica_edges = tica_hist = None
    if tica is not None:
        projections = [tica.transform(f[:, chosen])[:, :2] for f in features]
        pooled = np.concatenate(projections)
        lo, hi = pooled.min(0), pooled.max(0)
        tica_edges = [np.linspace(lo[d], max(hi[d], lo[d] + 1e-9), TICA_BINS + 1) for d in range(2)]
        tica_hist = _tica_histogram(projections, tica_edges)
    frames = np.concatenate(segments)
    torsion_edges = np.linspace(-np.pi, np.pi, TORSION_BINS + 1)
    return Reference(
        geom=geom, frames=frames, torsion_edges=torsion_edges,
        torsion_hist=binned(np.concatenate(angles)[..., None], [torsion_edges]),
        tica=tica, tica_features=chosen, tica_note=note, tica_edges=tica_edges, tica_hist=tica_hist,
        rmsf=rmsf(frames[:, geom.ca]), contacts=contact_frequency(frames, geom) if len(geom.ligand) else None,
        bond_lengths=bond_lengths(frames, geom).mean(0), step_sigma=np.sqrt(step_var), projections=projections,
        dt_ps=dt_ps, lag_frames=lag_frames)


def tic1_decorrelation(projections: list[np.ndarray] | None, dt_ps: float) -> float:
    """:func:`decorrelation_time` of TIC1 from per-trajectory (F_s, 2) projections; NaN when TICA was skipped (None)."""
    return math.nan if projections is None else decorrelation_time([p[:, 0] for p in projections], dt_ps)


@dataclass
class Comparison:
    """One ensemble measured against the reference.

    Attributes:
        metrics: the metric dict (NaN where undefined, see the module table).
        rmsf: (R,) Å; contacts: (R,) or None; tica_hist: (30, 30) counts;
        projections: per trajectory, (F_s, 2) TIC1/TIC2 of all its frames; both None when TICA was skipped
            (or, with ``atoms``, no torsion has a generated atom).
        scored: per trajectory, (F_s,) bool, the frames the metrics were computed on.
        runs: :func:`scored_runs` of ``projections``: the time series of scored frames (None when TICA was skipped).
    """

    metrics: dict
    rmsf: np.ndarray
    contacts: np.ndarray | None
    tica_hist: np.ndarray | None
    projections: list | None
    scored: list
    runs: list | None


def drift_span(segments: list[np.ndarray], dt_ps: float) -> float:
    """The time span (ps) the drift metrics look at: the shortest trajectory's."""
    return (min(len(x) for x in segments) - 1) * dt_ps


def compare(ref: Reference, segments: list[np.ndarray], dt_ps: float, weights: np.ndarray | None = None,
            scored: list[np.ndarray] | None = None, atoms: np.ndarray | None = None) -> Comparison:
    """Measure generated trajectories against the reference.

    Args:
        segments: per generated trajectory, (F_s, A, 3) Å in the common Cα frame.
        dt_ps: time between generated frames.
        weights: optional (ΣF_s,) non-negative frame weights (not all 0), one per frame of ``segments``
            concatenated (e.g. the Boltzmann weights of ``hemeplm relax --reweight``). They weight the
            distributional metrics: the torsion and TICA histograms (``torsion_jsd*``, ``tica_jsd``), the
            RMSF (weighted mean position and mean square displacement; ``rmsf_pearson``), the contact
            frequencies (``contact_jsd``, ``contact_pearson``) and the ligand RMSD's mean and median
            (:func:`~hemeplm.evaluate.stats.weighted_median`). The validity checks (``bond_ok_fraction*``,
            ``clashes_per_frame*``, ``ligand_valid_fraction``, the backbone checks and physical filter) stay
            unweighted per-frame fractions, and ``tic1_decorrelation_ps`` stays a property of the unweighted
            time series. Equal weights are the unweighted ensemble and give exactly the numbers of ``weights=None``.
        scored: optional, per trajectory, (F_s,) bool: the generated frames, the only ones measured (module
            docstring); None: all. The weights of the others are dropped.
        atoms: optional (A,) bool, the generated atoms (module docstring); None: all.
    Raises:
        HemeplmError: when ``weights`` does not hold one weight per frame, or no frame is scored.
    """
    geom = ref.geom
    everything = np.concatenate(segments)
    scored = [np.ones(len(x), dtype=bool) for x in segments] if scored is None else [
        np.asarray(k, dtype=bool) for k in scored]
    keep = np.concatenate(scored)
    if not keep.any():
        raise HemeplmError("no generated frame to score: every frame was given (conditioned)")
    frames = everything[keep]
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(everything),):
            raise HemeplmError(f"{weights.size} weights for {len(everything)} generated frames")
        weights = weights[keep]
        if np.all(weights == weights[0]):
            weights = None          # the unweighted ensemble: take the unweighted path, bit for bit
    angles = [torsion_angles(s, geom.torsions) for s in segments]
    counted = np.ones(len(geom.torsions), dtype=bool) if atoms is None else atoms[geom.torsions].any(1)
    jsd = jensen_shannon(ref.torsion_hist, binned(np.concatenate(angles)[keep][..., None], [ref.torsion_edges],
                                                  weights))
    metrics = {"torsion_jsd": float(jsd[counted].mean()) if counted.any() else math.nan}
    for t in TORSION_TYPES:
        sel = (geom.torsion_type == t) & counted
        metrics[f"torsion_jsd_{t}"] = float(jsd[sel].mean()) if sel.any() else math.nan
    projections = tica_hist = None
    metrics["tica_jsd"] = math.nan
    if ref.tica is not None and counted.any():
        projections = [ref.tica.transform(_sin_cos(a)[:, ref.tica_features])[:, :2] for a in angles]
        tica_hist = _tica_histogram([np.concatenate(projections)[keep]], ref.tica_edges, weights)
        metrics["tica_jsd"] = float(jensen_shannon(ref.tica_hist.ravel(), tica_hist.ravel()))
    fluct = rmsf(frames[:, geom.ca], weights)
    moving = np.ones(len(geom.ca), dtype=bool) if atoms is None else atoms[geom.ca]
    metrics["rmsf_pearson"] = pearson(fluct[moving], ref.rmsf[moving]) if moving.sum() > 1 else math.nan
    contacts = None
    if len(geom.ligand):
        contacts = contact_frequency(frames, geom, weights=weights)
        paired = np.flatnonzero(keep) if len(everything) == len(ref.frames) else None
        rmsd = ligand_rmsd(frames, ref.frames, geom, paired)
        metrics.update(contact_jsd=float(jensen_shannon(contacts, ref.contacts)),
                       contact_pearson=pearson(contacts, ref.contacts),
                       ligand_rmsd_mean_A=float(rmsd.mean() if weights is None else np.average(rmsd, weights=weights)),
                       ligand_rmsd_median_A=float(np.median(rmsd)) if weights is None
                       else weighted_median(rmsd, weights))
    else:
        metrics.update(contact_jsd=math.nan, contact_pearson=math.nan,
                       ligand_rmsd_mean_A=math.nan, ligand_rmsd_median_A=math.nan)
    runs = scored_runs(projections, scored)
    metrics["tic1_decorrelation_ps"] = tic1_decorrelation(runs or None, dt_ps)
    metrics.update(validity(frames, ref, atoms))
    metrics.update(drift(segments, geom, dt_ps, drift_span(segments, dt_ps), scored))
    metrics.update(tps_success_fraction=math.nan, tps_path_frames_mean=math.nan)  # set by --task tps
    return Comparison(metrics=metrics, rmsf=fluct, contacts=contacts, tica_hist=tica_hist, projections=projections,
                      scored=scored, runs=runs)
