"""PoseBusters checks of ligand poses against the protein, bond orders for them, and the poses as SDF."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MOL2, PRMTOP, T4L

from hemeplm.evaluate.geometry import build_geometry
from hemeplm.evaluate.posebusters import ligand_template, posebusters_checks, write_poses
from hemeplm.data.load import load_system


@pytest.fixture(scope="module")
def md():
    """The shipped MD's first three frames (prmtop: the xylene's hydrogens give its bond orders) and geometry."""
    system = load_system(PRMTOP, [T4L / "md" / "traj.xtc"], ligand="resname TMP")
    geom = build_geometry(system.topology, system.ligand, system.segments[0][0], PRMTOP)
    return system, geom, system.segments[0][:3]


def test_md_frames_pass(md):
    system, geom, frames = md
    template, note = ligand_template(system, geom)
    assert note.startswith("bond orders from the topology (perceived from its hydrogens)")
    from rdkit import Chem

    assert Chem.MolToSmiles(template) == "Cc1ccc(C)cc1"
    found = posebusters_checks([frames], geom, template)
    checks = {k: v for k, v in found.items() if k != "posebusters_pass_fraction"}
    assert {"posebusters_sanitization", "posebusters_bond_lengths", "posebusters_bond_angles",
            "posebusters_internal_steric_clash", "posebusters_aromatic_ring_flatness",
            "posebusters_minimum_distance_to_protein"} <= set(checks)
    assert found["posebusters_pass_fraction"] == 1.0 and set(checks.values()) == {1.0}


def test_broken_and_displaced_poses_fail(md):
    system, geom, frames = md
    template, _ = ligand_template(system, geom, MOL2)
    broken = frames.copy()
    broken[:, geom.ligand[0]] += 1.0                      # one ring carbon 1.7 Å out of place
    found = posebusters_checks([broken], geom, template)
    assert found["posebusters_bond_lengths"] == 0.0 and found["posebusters_pass_fraction"] == 0.0
    assert found["posebusters_minimum_distance_to_protein"] == 1.0
    away = frames.copy()
    away[:, geom.ligand] += 40.0                           # the whole ligand far from the protein
    found = posebusters_checks([away], geom, template)
    assert found["posebusters_bond_lengths"] == 1.0 and found["posebusters_protein-ligand_maximum_distance"] == 0.0


def test_bond_orders_from_a_mol2_for_a_heavy_atom_topology(md, tmp_path):
    import mdtraj

    system, geom, frames = md
    pdb = tmp_path / "heavy.pdb"
    mdtraj.Trajectory(frames[:1] / 10.0, system.topology).save_pdb(str(pdb))
    heavy = load_system(pdb, [], ligand="resname TMP")
    template, note = ligand_template(heavy, geom)
    assert template is None and "--ligand-file" in note
    template, note = ligand_template(heavy, geom, MOL2)
    assert note.startswith(f"bond orders from {MOL2}") and template.GetNumAtoms() == len(geom.ligand)


def test_poses_as_sdf(md, tmp_path):
    from rdkit import Chem

    system, geom, frames = md
    template, _ = ligand_template(system, geom, MOL2)
    path = write_poses(tmp_path / "poses.sdf", [frames[:2], frames[2:]], ["a.xtc", "b.xtc"], geom, template)
    mols = list(Chem.SDMolSupplier(str(path)))
    assert [m.GetProp("_Name") for m in mols] == ["a.xtc frame 0", "a.xtc frame 1", "b.xtc frame 0"]
    assert {Chem.MolToSmiles(m) for m in mols} == {"Cc1ccc(C)cc1"}
    for mol, frame in zip(mols, frames):
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), frame[geom.ligand], atol=1e-3)
