"""hemeplm relax: restrained minimisation in the training force field, failed frames reported by index,
Boltzmann weights, the command's files, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
from conftest import INPCRD, PRMTOP, ROOT, heme_pdb, write_dcd

from hemeplm.cli import main
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.relax import boltzmann_weights, load_weights, relax_trajectories

MOVED, FAR_A = "resSeq 117 and name CD1", 12.0  # LEU117 CD1 is put onto its nearest side-chain atom


@pytest.fixture(scope="module")
def t4l(tmp_path_factory) -> dict:
    """The demo complex's heavy atoms (minimised coordinates) as PDB + a 3-frame DCD: frame 0 with a clash,
    frame 1 as is, frame 2 NaN; relaxed by ``hemeplm relax`` with the demo prmtop and ``--reweight``."""
    from openmm import app, unit

    out = tmp_path_factory.mktemp("relax")
    full = mdtraj.load_topology(str(PRMTOP))
    heavy = full.select("not element H")
    xyz = np.asarray(app.AmberInpcrdFile(str(INPCRD)).positions.value_in_unit(unit.nanometer))[heavy]
    pdb = out / "heavy.pdb"
    mdtraj.Trajectory(xyz[None], full.subset(heavy)).save_pdb(str(pdb))
    top = mdtraj.load_topology(str(pdb))
    a = int(top.select(MOVED)[0])
    others = top.select(f"sidechain and not resname TMP and not resid {top.atom(a).residue.index}")
    b = int(others[np.argmin(np.linalg.norm(xyz[others] - xyz[a], axis=1))])
    clashed = xyz.copy()
    clashed[a] = xyz[b] + 0.06 * (xyz[a] - xyz[b]) / np.linalg.norm(xyz[a] - xyz[b])  # 0.6 Å from atom b
    frames = np.stack([clashed, xyz, np.full_like(xyz, np.nan)])
    dcd = write_dcd(out / "gen.dcd", frames)
    argv = ["relax", "--topology", str(pdb), "--frames", str(dcd), "--out", str(out / "gen.relaxed.xtc"),
            "--forcefield-topology", str(PRMTOP), "--reweight", "--quiet"]
    main(argv)
    return {"argv": argv, "pdb": pdb, "frames": frames * 10.0, "a": a, "b": b, "out": out / "gen.relaxed.xtc",
            "summary": json.loads((out / "gen.relaxed.json").read_text()), "npz": out / "gen.relaxed.npz"}


def test_clash_removed_and_only_locally(t4l):
    from hemeplm.data.load import load_system
    from hemeplm.evaluate.geometry import build_geometry
    from hemeplm.evaluate.checks import clashes_per_frame

    relaxed = mdtraj.load(str(t4l["out"]), top=str(t4l["out"].with_suffix(".pdb"))).xyz * 10.0  # (2, A, 3) Å
    assert relaxed.shape == (2, *t4l["frames"].shape[1:])
    system = load_system(t4l["pdb"], [t4l["pdb"]])
    geom = build_geometry(system.topology, system.ligand, system.segments[0][0])
    assert clashes_per_frame(t4l["frames"][:1], geom) >= 1
    assert clashes_per_frame(relaxed, geom) == 0
    a, b = t4l["a"], t4l["b"]
    assert np.linalg.norm(relaxed[0, a] - relaxed[0, b]) > 3.0
    # the clash changes the relaxation only near it: far atoms end where they end without the clash, but for
    # the odd hydroxyl that settles into another local minimum, up to a few tenths of an Å (the minimiser
    # moves all atoms at once; measured 0.2-0.31 Å on two runs)
    far = np.linalg.norm(t4l["frames"][1] - t4l["frames"][1, a], axis=1) > FAR_A
    assert far.sum() > 900
    apart = np.linalg.norm(relaxed[0, far] - relaxed[1, far], axis=1)
    assert np.quantile(apart, 0.99) < 0.1 and apart.max() < 0.5
    s = t4l["summary"]
    assert s["forcefield"]["kind"] == "amber" and s["forcefield"]["solvent"] == "implicit"
    assert s["placed_atoms"] == 2621 - relaxed.shape[1] and s["restrained_atoms"] == relaxed.shape[1]
    with np.load(t4l["npz"]) as z:
        assert (z["energy_after_kcal_mol"] < z["energy_before_kcal_mol"]).all()
        assert z["energy_before_kcal_mol"][0] > z["energy_before_kcal_mol"][1] + 1e3  # the clash
        np.testing.assert_allclose(z["rmsd_A"], np.sqrt(((relaxed - t4l["frames"][:2]) ** 2).sum(-1).mean(-1)),
                                   atol=0.01)  # XTC keeps 0.001 nm
        assert (z["seconds"] > 0).all()
    assert s["seconds_per_frame"] > 0


def test_failed_frame_reported_not_dropped(t4l):
    s = t4l["summary"]
    assert (s["frames_total"], s["frames_relaxed"]) == (3, 2)
    assert len(s["failed"]) == 1
    fail = s["failed"][0]
    assert (fail["file"], fail["frame"]) == (t4l["argv"][4], 2)
    assert fail["reason"].startswith("non-finite coordinates")
    with np.load(t4l["npz"]) as z:
        assert z["source_frame"].tolist() == [0, 1] and z["source_file"].tolist() == [0, 0]
        assert z["failed_frame"].tolist() == [2] and z["failed_reason"][0] == fail["reason"]


def test_weights_sum_to_one(t4l):
    w = load_weights(t4l["npz"])
    assert w.shape == (2,) and np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    with np.load(t4l["npz"]) as z:
        np.testing.assert_allclose(w, boltzmann_weights(z["energy_after_kcal_mol"], 300.0)[0])
    assert 1.0 <= t4l["summary"]["reweight"]["ess"] <= 2.0


def test_boltzmann_weights_any_scale(tmp_path):
    w, ess = boltzmann_weights(np.array([-1e6, 0.0, 1e6, -1e6 + 0.5]), 300.0)
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0) and w[1] == w[2] == 0.0
    assert w[0] / w[3] == pytest.approx(np.exp(0.5 / (0.0019872043 * 300.0)))
    assert 1.0 < ess < 2.0
    w, ess = boltzmann_weights(np.full(5, -123.0), 300.0)
    np.testing.assert_allclose(w, 0.2)
    assert ess == pytest.approx(5.0)
    with pytest.raises(HemeplmError):
        boltzmann_weights(np.array([0.0, np.nan]), 300.0)
    np.savez(tmp_path / "none.npz", rmsd_A=np.zeros(3))
    with pytest.raises(HemeplmError, match="none.npz: holds no weights"):
        load_weights(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", weights=np.array([0.5, 0.6]))
    with pytest.raises(HemeplmError, match="bad.npz"):
        load_weights(tmp_path / "bad.npz")


def test_overlapping_or_non_finite_result_is_a_failure():
    from openmm import app

    from hemeplm.forcefield.relax import _fault

    top = app.Topology()
    thr, asp = (top.addResidue(name, top.addChain()) for name in ("THR", "ASP"))
    atoms = [top.addAtom("HG1", app.element.hydrogen, thr), top.addAtom("OD1", app.element.oxygen, asp)]
    assert _fault(np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]), -10.0, atoms) is None
    reason = _fault(np.array([[0.0, 0.0, 0.0], [0.001, 0.0, 0.0]]), -1e6, atoms)
    assert reason.startswith("1 atom pair(s) still overlap") and "THR1 HG1 and ASP2 OD1 (0.01 A apart)" in reason
    assert "non-finite" in _fault(np.zeros((2, 3)), float("nan"), atoms)


def test_cli_refuses_to_overwrite(t4l, capsys):
    with pytest.raises(SystemExit) as info:
        main(t4l["argv"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would overwrite" in err and str(t4l["out"]) in err and "--force" in err


@pytest.fixture()
def heme(tmp_path) -> tuple:
    """One heme (heavy atoms, from 19hc) as PDB and a 2-frame DCD of it."""
    pdb = heme_pdb(tmp_path / "hem.pdb", first_of_chain="A")
    xyz = mdtraj.load(str(pdb)).xyz[0]
    return pdb, write_dcd(tmp_path / "hem.dcd", np.stack([xyz, xyz + 0.003]))


def test_heme_charmm36_route(heme, tmp_path, capsys):
    pdb, dcd = heme
    argv = ["relax", "--topology", str(pdb), "--frames", str(dcd), str(dcd), "--out", str(tmp_path / "r.dcd")]
    main(argv)
    assert "relaxed 4 of 4 frames" in capsys.readouterr().out
    s = json.loads((tmp_path / "r.json").read_text())
    assert s["forcefield"]["kind"] == "charmm36" and s["forcefield"]["solvent"] == "vacuum"
    assert s["placed_atoms"] > 20  # the heme's hydrogens
    assert s["trajectories"] == [str(tmp_path / "r_000.dcd"), str(tmp_path / "r_001.dcd")]
    relaxed = mdtraj.load(s["trajectories"][1], top=str(tmp_path / "r.pdb"))
    assert relaxed.n_frames == 2 and [a.name for a in relaxed.topology.atoms] == \
        [a.name for a in mdtraj.load_topology(str(pdb)).atoms]
    main([*argv, "--force", "--restraint", "50", "--md-steps", "20"])  # --force replaces the outputs
    s = json.loads((tmp_path / "r.json").read_text())
    assert (s["config"]["restraint_kcal_mol_A2"], s["config"]["md_steps"], s["frames_relaxed"]) == (50.0, 20, 4)


def test_unmatched_atoms_are_an_error(heme, tmp_path):
    pdb, dcd = heme
    renamed = tmp_path / "renamed.pdb"
    renamed.write_text(pdb.read_text().replace(" CHA HEM", " CXX HEM", 1))
    with pytest.raises(HemeplmError, match=f"{renamed}: atom CXX of HEM.* has no counterpart"):
        relax_trajectories(renamed, [dcd], tmp_path / "r.xtc", forcefield_topology=pdb, progress=False)
    assert not list(tmp_path.glob("r.*"))


def test_sample_py_relax_names_the_ligand_charmm36_lacks(tiny_run, tiny_system, tmp_path):
    """The tiny system holds p-xylene: its PDB has no CHARMM36 parameters for it, and the error says so."""
    out = tmp_path / "fc.xtc"
    proc = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tiny_run["ckpt"]), "--task", "forecast",
                           "--topology", str(tiny_system["topology"]), "--frames", str(tiny_system["trajectory"]),
                           "--num-frames", "5", "--out", str(out), "--relax"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "TMP cannot be parameterised" in proc.stderr and str(tmp_path / "fc.pdb") in proc.stderr
    assert out.exists() and not (tmp_path / "fc.relaxed.json").exists()
