"""The per-frame confidence score: written by sampling, read and calibrated by ``hemeplm evaluate``; and the
generated files' topology found beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PDB
from test_evaluate import _fake_md, _save

from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.generate.confidence import frame_uncertainty
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler, run_task


def test_forecast_summary_holds_accumulated_uncertainty(tiny_run, tiny_system, tmp_path):
    gen = Sampler.from_checkpoint(tiny_run["ckpt"])
    summary = run_task(gen, "forecast", tiny_system["topology"], tiny_system["trajectory"], tmp_path / "f.dcd",
                       start=3, num_frames=11, num_samples=2, seed=4)
    u = np.asarray(summary["uncertainty_A"])
    t = gen.window                                                  # 5: windows keyed on frames 0, 4, 8
    assert u.shape == (2, 11) and (u[:, 0] == 0).all() and (u[:, 1:] > 0).all()
    assert summary["confidence_seconds"] >= 0
    assert json.loads((tmp_path / "f.json").read_text())["uncertainty_A"] == summary["uncertainty_A"]
    for key in (t - 1, 2 * (t - 1)):                                # later windows start from their key's score
        assert (u[:, key + 1:key + t] >= u[:, key:key + 1] - 1e-4).all()
    frames = torch.from_numpy(np.stack(_read(summary)))
    raw = frame_uncertainty(gen, frames, accumulate=False, seed=4).numpy()
    np.testing.assert_allclose(raw[:, :t], u[:, :t], atol=1e-3)     # the first window has nothing to add
    assert (raw[:, t:] < u[:, t:] - 1e-4).all()
    again = frame_uncertainty(gen, frames, accumulate=True, seed=4).numpy()
    np.testing.assert_allclose(again, u, atol=1e-3)                 # the same seed, the same scores


def _read(summary: dict) -> list[np.ndarray]:
    import mdtraj

    return [mdtraj.load(p, top=summary["topology_pdb"]).xyz * 10.0 for p in summary["trajectories"]]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A 20-frame reference of complex.pdb, and two heavy-atom 'samples' of it (gen_000.xtc, gen_001.xtc) whose
    noise grows frame by frame, with gen.pdb and gen.json (per-frame noise as ``uncertainty_A``) beside them."""
    import mdtraj

    root = tmp_path_factory.mktemp("sampled")
    t = mdtraj.load(str(PDB))
    rng = np.random.default_rng(3)
    ref = _fake_md(t, 20, rng)
    heavy = t.topology.select("not element H")
    t.atom_slice(heavy).save_pdb(str(root / "gen.pdb"))
    sigma = np.stack([0.05 * np.arange(20), 0.08 * np.arange(20)[::-1] ** 0.5 * np.arange(20) ** 0.5])
    files = [_save(t.topology.subset(heavy), ref[:, heavy] + rng.normal(size=(20, len(heavy), 3)) * s[:, None, None],
                   root / f"gen_{k:03d}.xtc") for k, s in enumerate(sigma)]
    (root / "gen.json").write_text(json.dumps({"trajectories": [str(f) for f in files],
                                               "uncertainty_A": sigma.round(4).tolist()}))
    return {"root": root, "ref": _save(t.topology, ref, root / "ref.xtc"), "files": files, "sigma": sigma,
            "heavy": heavy, "topology": t.topology}


def test_evaluate_finds_topology_and_calibrates_confidence(sampled):
    metrics = evaluate_trajectories(PDB, [sampled["ref"]], sampled["files"], sampled["root"] / "eval",
                                       posebusters_frames=0)
    info, model = metrics["info"], metrics["model"]
    assert info["generated_topology"] == str(sampled["root"] / "gen.pdb")
    assert info["confidence"] == f"uncertainty_A from {sampled['root'] / 'gen.json'}"
    assert model["confidence_spearman_ligand_rmsd"] > 0.8 and model["confidence_spearman_violations"] > 0.5
    # the second sample's noise peaks mid-way: its frame index ranks the error worse than the score does
    assert model["lead_time_spearman_ligand_rmsd"] < model["confidence_spearman_ligand_rmsd"]
    assert metrics["static"]["confidence_spearman_ligand_rmsd"] is None


def test_evaluate_without_scores_or_a_fitting_topology(sampled, tmp_path):
    import shutil

    lone = shutil.copy(sampled["files"][0], tmp_path / "lone.xtc")
    with pytest.raises(HemeplmError, match=r"lone\.xtc: no topology beside it \(lone\.pdb.*--generated-topology"):
        evaluate_trajectories(PDB, [sampled["ref"]], [lone], tmp_path / "a", posebusters_frames=0)
    shutil.copy(sampled["root"] / "gen.pdb", tmp_path / "lone.pdb")
    metrics = evaluate_trajectories(PDB, [sampled["ref"]], [lone], tmp_path / "b", posebusters_frames=0)
    assert metrics["info"]["confidence"] == f"none: no sample summary (JSON) beside {lone}"
    assert metrics["model"]["confidence_spearman_ligand_rmsd"] is None
    (tmp_path / "lone.json").write_text("{not json")
    with pytest.raises(HemeplmError, match=r"lone\.json: not a readable sample summary"):
        evaluate_trajectories(PDB, [sampled["ref"]], [lone], tmp_path / "c", posebusters_frames=0)
