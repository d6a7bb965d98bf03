"""GFN2-xTB labels (``hemeplm label --level gfn2``): forces are the energy's gradient, failed frames are
left out and recorded, the charge and spin options are checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hemeplm.errors import HemeplmError
from hemeplm.forcefield import qm
from conftest import write_dcd

pytest.importorskip("tblite")


def ethanol_files(tmp_path, n_frames: int = 4, overlap_frame: int | None = None):
    """An ethanol PDB (RDKit, MMFF geometry) and a DCD of ``n_frames`` jittered copies; with
    ``overlap_frame`` that frame has two atoms on top of each other (GFN2-xTB cannot compute it)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    AllChem.MMFFOptimizeMolecule(mol)
    pdb = tmp_path / "ethanol.pdb"
    Chem.MolToPDBFile(mol, str(pdb))
    x = mol.GetConformer().GetPositions()
    rng = np.random.default_rng(0)
    frames = x[None] + rng.normal(0.0, 0.05, (n_frames, *x.shape))
    if overlap_frame is not None:
        frames[overlap_frame, 1] = frames[overlap_frame, 0]
    dcd = write_dcd(tmp_path / "md.dcd", frames / 10.0)
    return pdb, dcd, np.array([a.GetAtomicNum() for a in mol.GetAtoms()])


def test_gfn2_forces_are_minus_the_energy_gradient(tmp_path):
    from hemeplm.cli import main

    pdb, dcd, numbers = ethanol_files(tmp_path, overlap_frame=2)
    main(["label", str(pdb), str(dcd), "--out", str(tmp_path / "out"), "--level", "gfn2", "--quiet"])
    folder = tmp_path / "out" / "md"
    meta = json.loads((folder / "labels.json").read_text())
    assert meta["level"] == "gfn2" and meta["n_frames"] == 3 and meta["n_frames_read"] == 4
    assert [f["frame"] for f in meta["failed_frames"]] == [2] and "close" in meta["failed_frames"][0]["error"]
    with np.load(folder / "energies_forces.npz") as z:
        energy, forces, index = z["energy_kcal_mol"], z["forces_kcal_mol_A"], z["frame_index"]
    assert index.tolist() == [0, 1, 3] and forces.shape == (3, 9, 3)
    assert np.isfinite(energy).all() and np.isfinite(forces).all()
    assert -7200 < energy[0] < -7100  # ethanol's GFN2-xTB energy, about -11.39 Hartree
    import mdtraj

    written = mdtraj.load(str(folder / "traj.dcd"), top=str(folder / "topology.pdb")).xyz * 10.0
    assert written.shape == (3, 9, 3)
    # central differences of the energy at the written coordinates (float32) against the labelled forces
    gfn2 = qm.GFN2(numbers)
    x = written[1].astype(np.float64)
    e, f = gfn2(x)
    assert e == pytest.approx(energy[1], abs=1e-4) and np.allclose(f, forces[1], atol=1e-3)
    h = 1e-3
    for atom, k in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[atom, k] += h
        xm[atom, k] -= h
        fd = -(gfn2(xp)[0] - gfn2(xm)[0]) / (2 * h)
        assert fd == pytest.approx(f[atom, k], abs=0.01)


def test_gfn2_charge_and_spin_options(tmp_path, capsys):
    from hemeplm.cli import main

    pdb, dcd, numbers = ethanol_files(tmp_path, n_frames=1)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["label", str(pdb), str(dcd), "--out", str(out), "--level", "gfn2", "--multiplicity", "2", "--quiet"])
    assert "26 electrons (charge +0) cannot have spin multiplicity 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["label", str(pdb), str(dcd), "--out", str(out), "--charge", "1", "--quiet"])
    assert "are for --level gfn2" in capsys.readouterr().err
    main(["label", str(pdb), str(dcd), "--out", str(out), "--level", "gfn2", "--charge", "1", "--multiplicity", "2",
          "--quiet"])
    with np.load(out / "md" / "energies_forces.npz") as z:
        cation = float(z["energy_kcal_mol"][0])
    neutral = qm.GFN2(numbers)(_frame(pdb, dcd))[0]
    assert 150 < cation - neutral < 350  # a vertical ionisation energy of several eV
    assert json.loads((out / "md" / "labels.json").read_text())["multiplicity"] == 2


def _frame(pdb, dcd) -> np.ndarray:
    import mdtraj

    return mdtraj.load(str(dcd), top=str(pdb)).xyz[0].astype(np.float64) * 10.0


def test_a_frame_that_fails_everywhere_is_an_error(tmp_path):
    from hemeplm.forcefield.labels import label_trajectories

    pdb, dcd, _ = ethanol_files(tmp_path, n_frames=1, overlap_frame=0)
    with pytest.raises(HemeplmError, match="failed on every frame"):
        label_trajectories(pdb, [dcd], tmp_path / "out", level="gfn2", progress=False)
    with pytest.raises(HemeplmError, match="cannot have spin multiplicity"):
        qm.check_spin(np.array([1]), 0, 1)
