"""Kinetics of ``hemeplm evaluate``: a Markov state model on the TICA projection, null on a short reference."""

from __future__ import annotations

import math

import numpy as np

from hemeplm.evaluate.kinetics import fit_kinetics, kinetics_metrics

CENTRES = np.array([[-3.0, 0.0], [3.0, 0.0]])


def _two_state(n_frames: int, p_switch: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_frames, 2) points around two well centres, hopping with probability ``p_switch`` per frame; and the
    (n_frames,) well of every frame."""
    rng = np.random.default_rng(seed)
    flips = rng.random(n_frames) < p_switch
    flips[0] = False
    well = np.cumsum(flips) % 2
    return CENTRES[well] + rng.normal(scale=0.3, size=(n_frames, 2)), well


def test_two_state_kinetics():
    x, well = _two_state(6000, 0.02, seed=0)
    kin, note = fit_kinetics([x], lag_frames=1, dt_ps=2.0, seed=0)
    assert kin is not None and note.startswith("10 k-means microstates on TIC1/TIC2")
    same = kinetics_metrics([x], kin, dt_ps=2.0)
    assert same["kinetics_population_jsd"] < 1e-12
    np.testing.assert_allclose(kin.reference["kinetics_populations"], same["kinetics_populations"])  # one MSM fit
    assert kin.reference["kinetics_timescale_1_ps"] == same["kinetics_timescale_1_ps"]
    pops = np.asarray(same["kinetics_populations"])
    np.testing.assert_allclose(sorted(pops), sorted([np.mean(well == 0), np.mean(well == 1)]), atol=0.03)
    # a symmetric two-state chain relaxes with timescale -lag / ln(1 - 2p); first passage takes about 1 / p frames
    expected = -2.0 / math.log(1 - 2 * 0.02)
    assert abs(same["kinetics_timescale_1_ps"] - expected) < 0.25 * expected
    mfpt = np.asarray(same["kinetics_mfpt_ps"])
    assert mfpt[0, 0] == 0 and mfpt[1, 1] == 0
    assert 0.5 * 2.0 / 0.02 < mfpt[0, 1] < 2.0 * 2.0 / 0.02 and 0.5 * 2.0 / 0.02 < mfpt[1, 0] < 2.0 * 2.0 / 0.02
    # a process ten times slower, and one that never leaves its first well
    slow = kinetics_metrics([_two_state(6000, 0.002, seed=1)[0]], kin, dt_ps=2.0)
    assert slow["kinetics_timescale_1_ps"] > 4 * same["kinetics_timescale_1_ps"]
    stuck = kinetics_metrics([x[well == well[0]][:500]], kin, dt_ps=2.0)
    assert max(stuck["kinetics_populations"]) == 1.0 and stuck["kinetics_population_jsd"] > 0.1
    assert np.isnan(np.asarray(stuck["kinetics_mfpt_ps"], dtype=float)).sum() == 3  # all but the stuck state to itself


def test_kinetics_null_with_a_reason():
    kin, note = fit_kinetics(None, 1, 1.0, tica_note="skipped: 39 time-lagged frame pairs")
    assert kin is None and note == "skipped: needs TICA, which was skipped: 39 time-lagged frame pairs"
    kin, note = fit_kinetics([_two_state(150, 0.02, seed=0)[0]], 1, 1.0)
    assert kin is None and note.startswith("skipped: 149 time-lagged reference frame pairs at a lag of 1 frames; "
                                           "need at least 200")
    assert all(v is not None and np.isnan(v) for v in kinetics_metrics([np.zeros((9, 2))], kin, 1.0).values())
