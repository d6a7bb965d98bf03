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
