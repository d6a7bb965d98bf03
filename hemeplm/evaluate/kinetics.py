"""Kinetics on the TICA projection: a Markov state model of the reference, and every ensemble measured on its states.

On the reference's TIC1/TIC2 (:func:`~hemeplm.evaluate.trajectory.fit_reference`),
k-means (deeptime, :data:`N_MICROSTATES` clusters) makes microstates; a
reversible maximum-likelihood MSM (deeptime) on the largest connected set of
the reference's transitions at the TICA lag is split by PCCA+ into
:data:`N_METASTABLE` metastable states (each microstate to the one of largest
membership). Every ensemble (the reference, the model, each baseline) is
assigned to the same microstates and gets its own MSM at the same lag in
time (the lag in its own frames rounded, at least one), from which come
populations of the reference's metastable states (its stationary
distribution summed over their microstates), mean first-passage times between
them, and its slowest implied timescales.

Kinetics needs TICA (``info.tica``) and at least
:data:`PAIRS_PER_MICROSTATE` time-lagged reference frame pairs per
microstate, so that each transition count rests on more than a handful of
frames; otherwise every ``kinetics_*`` is null and ``info.kinetics`` says why.
The reference's own values are in ``info.reference``.

| key | definition | better |
|---|---|---|
| ``kinetics_populations`` | (M,) stationary populations of the reference's metastable states | close to reference |
| ``kinetics_population_jsd`` | JSD (base 2) between those populations and the reference's | lower |
| ``kinetics_mfpt_ps`` | (M, M) mean first-passage time (ps) from metastable state i to j; null where i or j has no microstate in the ensemble's connected set | close to reference |
| ``kinetics_timescales_ps`` | the :data:`N_TIMESCALES` slowest implied timescales (ps) of the ensemble's MSM; null beyond its states | close to reference |
| ``kinetics_timescale_1_ps`` | the slowest of them | close to reference |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hemeplm.evaluate.stats import jensen_shannon

N_MICROSTATES = 10
N_METASTABLE = 2
N_TIMESCALES = 3
#: kinetics is estimated only with at least this many time-lagged reference frame pairs per microstate
PAIRS_PER_MICROSTATE = 20
KEYS = ("kinetics_populations", "kinetics_population_jsd", "kinetics_mfpt_ps", "kinetics_timescales_ps",
        "kinetics_timescale_1_ps")


@dataclass
class Kinetics:
    """The reference's microstates and metastable states.

    Attributes:
        kmeans: fitted deeptime k-means model on TIC1/TIC2.
        metastable: (N_MICROSTATES,) metastable state of each microstate, -1 outside the reference's
            connected set.
        lag_ps: MSM lag time.
        reference: the reference's own :func:`kinetics_metrics` (its population JSD is 0).
    """

    kmeans: object
    metastable: np.ndarray
    lag_ps: float
    reference: dict


def _msm(dtrajs: list[np.ndarray], lag_frames: int):
    """Reversible maximum-likelihood MSM on the largest connected set of ``dtrajs`` at ``lag_frames``; None when
    no trajectory is longer than the lag or deeptime finds no estimable connected set (e.g. a trajectory that
    never moves)."""
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    usable = [d for d in dtrajs if len(d) > lag_frames]
    if not usable:
        return None
    counts = TransitionCountEstimator(lagtime=lag_frames, count_mode="sliding").fit_fetch(usable)
    try:
        return MaximumLikelihoodMSM(reversible=True).fit_fetch(counts.submodel_largest())
    except ValueError:
        return None


def fit_kinetics(projections: list[np.ndarray] | None, lag_frames: int, dt_ps: float, seed: int = 0,
                 tica_note: str = "") -> tuple[Kinetics | None, str]:
    """Microstates, MSM and PCCA+ metastable states of the reference, if it is long enough.

    Args:
        projections: per reference trajectory, (F_s, 2) TIC1/TIC2, or None when TICA was skipped.
        lag_frames: MSM lag in reference frames; dt_ps: time between reference frames.
        seed: k-means seed; tica_note: ``info.tica``, quoted when TICA was skipped.
    Returns:
        the :class:`Kinetics` (None when skipped) and a sentence for ``info.kinetics``.
    """
    from deeptime.clustering import KMeans

    if projections is None:
        return None, f"skipped: needs TICA, which was {tica_note}"
    pairs = sum(max(0, len(p) - lag_frames) for p in projections)
    need = PAIRS_PER_MICROSTATE * N_MICROSTATES
    if pairs < need:
        return None, (f"skipped: {pairs} time-lagged reference frame pairs at a lag of {lag_frames} frames; need at "
                      f"least {need} ({PAIRS_PER_MICROSTATE} per microstate, {N_MICROSTATES} microstates)")
    kmeans = KMeans(n_clusters=N_MICROSTATES, fixed_seed=seed).fit_fetch(np.concatenate(projections))
    msm = _msm([kmeans.transform(p) for p in projections], lag_frames)
    if msm is None or msm.n_states <= N_METASTABLE:
        return None, (f"skipped: the reference's largest connected set at a lag of {lag_frames} frames holds "
                      f"{0 if msm is None else msm.n_states} of {N_MICROSTATES} microstates; {N_METASTABLE} metastable states need more")
    metastable = np.full(N_MICROSTATES, -1, dtype=np.int64)
    metastable[msm.count_model.state_symbols] = msm.pcca(N_METASTABLE).assignments
    reference = _msm_metrics(msm, metastable, dt_ps)
    reference["kinetics_population_jsd"] = 0.0
    kin = Kinetics(kmeans=kmeans, metastable=metastable, lag_ps=lag_frames * dt_ps, reference=reference)
    return kin, (f"{N_MICROSTATES} k-means microstates on TIC1/TIC2, reversible MSM at a lag of {kin.lag_ps:g} ps "
                 f"on {msm.n_states} connected microstates, {N_METASTABLE} PCCA+ metastable states")


def kinetics_metrics(projections: list[np.ndarray] | None, kin: Kinetics | None, dt_ps: float) -> dict:
    """The module table's values for one ensemble.

    Args:
        projections: per trajectory, (F_s, 2) TIC1/TIC2 (None when TICA was skipped);
        kin: from :func:`fit_kinetics` (None: everything NaN); dt_ps: time between the ensemble's frames.
    """
    if kin is None or projections is None:
        return dict.fromkeys(KEYS, math.nan)
    lag = max(1, round(kin.lag_ps / dt_ps))
    msm = _msm([kin.kmeans.transform(p) for p in projections], lag)
    out = _msm_metrics(msm, kin.metastable, dt_ps)
    if msm is not None:
        out["kinetics_population_jsd"] = float(jensen_shannon(out["kinetics_populations"],
                                                              kin.reference["kinetics_populations"]))
    return out


def _msm_metrics(msm, metastable: np.ndarray, dt_ps: float) -> dict:
    """Populations, first-passage times and timescales of a fitted MSM (None: everything NaN) whose
    microstates belong to the ``metastable`` states; the population JSD is left NaN."""
    out = dict.fromkeys(KEYS, math.nan)
    if msm is None:
        return out
    states = metastable[msm.count_model.state_symbols]              # metastable state of each active microstate
    pops = np.array([msm.stationary_distribution[states == m].sum() for m in range(N_METASTABLE)])
    pops = pops / pops.sum() if pops.sum() > 0 else np.full(N_METASTABLE, math.nan)
    mfpt = np.full((N_METASTABLE, N_METASTABLE), math.nan)
    for i in range(N_METASTABLE):
        for j in range(N_METASTABLE):
            a, b = np.flatnonzero(states == i), np.flatnonzero(states == j)
            if len(a) and len(b):
                mfpt[i, j] = 0.0 if i == j else msm.mfpt(a, b) * dt_ps
    timescales = np.full(N_TIMESCALES, math.nan)
    k = min(N_TIMESCALES, msm.n_states - 1)
    if k > 0:
        timescales[:k] = msm.timescales(k) * dt_ps
    out.update(kinetics_populations=pops, kinetics_mfpt_ps=mfpt, kinetics_timescales_ps=timescales,
               kinetics_timescale_1_ps=float(timescales[0]))
    return out
