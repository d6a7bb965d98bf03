"""The Python API: mdtraj in, mdtraj out, the same numbers as sample.py."""

from __future__ import annotations

import mdtraj
import numpy as np
import pytest

import hemeplm
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler, run_task


@pytest.fixture(scope="module")
def model(tiny_run):
    return hemeplm.load(tiny_run["ckpt"], device="cpu")


@pytest.fixture(scope="module")
def md(tiny_system):
    return mdtraj.load(str(tiny_system["trajectory"]), top=str(tiny_system["topology"]))


def test_forecast_is_sample_py_as_a_trajectory(model, md, tiny_run, tiny_system, tmp_path):
    out = model.forecast(md, n_frames=7, seed=3)
    assert isinstance(out, mdtraj.Trajectory) and out.n_frames == 7
    assert out.topology.n_atoms == model.topology.n_atoms == tiny_run["ema"].n_atoms
    assert [r.resSeq for r in out.topology.residues] == [r.resSeq for r in md.topology.residues]
    np.testing.assert_allclose(out.time, md.time[0] + np.arange(7) * model.timestep_ps)
    heavy = md.topology.select("not element H")
    np.testing.assert_allclose(out.xyz[0], md.xyz[0, heavy], atol=1e-5)  # nm, the given frame kept
    run_task(Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu"), "forecast", tiny_system["topology"],
             tiny_system["trajectory"], tmp_path / "fc.dcd", start=0, num_frames=7, seed=3)
    np.testing.assert_allclose(out.xyz, mdtraj.load(str(tmp_path / "fc.dcd"), top=out.topology).xyz, atol=1e-5)


def test_paths_inpainting_and_samples(model, md):
    paths = model.transition_path(md, md, n_frames=6, start_frame=2, end_frame=30, n_samples=2)
    assert len(paths) == 2 and all(p.n_frames == 6 for p in paths)
    assert not np.allclose(paths[0].xyz[1:-1], paths[1].xyz[1:-1])  # independent samples
    np.testing.assert_allclose(paths[0].xyz[[0, -1]], paths[1].xyz[[0, -1]], atol=1e-5)  # the given end frames
    filled = model.inpaint(md[:6], seed=1)
    protein = filled.topology.select("protein")
    ligand = filled.topology.select("resname TMP")
    assert filled.n_frames == 6 and len(ligand) == 8
    given = md[:6].atom_slice(md.topology.select("not element H"))
    given.superpose(given, 0, atom_indices=given.topology.select("name CA"))
    np.testing.assert_allclose(filled.xyz[:, protein], given.xyz[:, protein], atol=1e-4)
    assert not np.allclose(filled.xyz[1:, ligand], given.xyz[1:, ligand], atol=1e-2)
    with pytest.raises(HemeplmError, match="matches no ligand atom"):
        model.inpaint(md[:6], atoms="name CA")


def test_api_is_run_task_in_memory(model, md, tiny_run, tiny_system, tmp_path, monkeypatch):
    """One dispatch: the API gives run_task's frames and times for the same request, from a start frame past 0,
    with the same confidence scores, and writes no file on the way."""
    gen = Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu")
    summary = run_task(gen, "forecast", tiny_system["topology"], tiny_system["trajectory"], tmp_path / "fc.dcd",
                       start=5, num_frames=6, seed=2)
    written = mdtraj.load(str(tmp_path / "fc.dcd"), top=summary["topology_pdb"])
    written.time = np.asarray(summary["start_time_ps"]) + np.arange(6) * summary["timestep_ps"]  # DCDs hold none

    def no_files(*args, **kwargs):
        raise AssertionError("the API wrote a file")

    monkeypatch.setattr(mdtraj.Trajectory, "save_hdf5", no_files)
    monkeypatch.setattr(mdtraj.Trajectory, "save", no_files)
    out = model.forecast(md, n_frames=6, frame=5, seed=2, confidence=True)
    np.testing.assert_allclose(out.xyz, written.xyz, atol=1e-5)
    np.testing.assert_allclose(out.time, written.time, atol=1e-3)  # frame 5's time, then the model's spacing
    np.testing.assert_allclose(out.time, (5 + np.arange(6)) * model.timestep_ps, atol=1e-6)
    np.testing.assert_allclose(out.uncertainty_A, summary["uncertainty_A"][0], atol=1e-4)
    last = model.forecast(md, n_frames=3, frame=-1)  # Python indexing: the last frame
    np.testing.assert_allclose(last.time[0], (md.n_frames - 1) * model.timestep_ps)
    path = model.transition_path(md, md, n_frames=8, start_frame=2, end_frame=30)
    np.testing.assert_allclose(path.time, 2 + np.arange(8) * 4.0, atol=1e-6)  # 28 ps over 7 steps


@pytest.mark.parametrize("call, message", [
    (lambda m, md: m.forecast(md, n_frames=0), "num_frames must be an integer of at least 2, got 0"),
    (lambda m, md: m.forecast(md, n_frames=5, n_samples=0), "num_samples must be an integer of at least 1, got 0"),
    (lambda m, md: m.forecast(md, n_frames=10 ** 9), "need at least 1.2 TB"),
    (lambda m, md: m.forecast(md, n_frames=5, frame=40), r"frame 40 is out of range \(the trajectory has 40 frames\)"),
    (lambda m, md: m.transition_path(md, md, n_frames=5, end_frame=-41), "end_frame -41 is out of range"),
])
def test_api_checks_values_before_work(model, md, call, message):
    with pytest.raises(HemeplmError, match=message):
        call(model, md)


def test_api_keeps_the_given_residue_numbers(model, md):
    shifted = md[:3]
    shifted.topology = md.topology.copy()
    for residue in shifted.topology.residues:
        residue.resSeq += 1000
    out = model.forecast(shifted, n_frames=3)
    assert [r.resSeq for r in out.topology.residues] == [r.resSeq for r in shifted.topology.residues]
    assert out.topology.residue(0).resSeq == 1084
