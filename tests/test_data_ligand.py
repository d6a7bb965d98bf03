"""Ligand chemistry of p-xylene from the Amber topology, from its mol2 file, and the protein-only case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MOL2, N_LIGAND_HEAVY, PDB, PRMTOP

from hemeplm.data.dataset import DataConfig, build_features
from hemeplm.data.ligand import ELEMENTS, ligand_features
from hemeplm.data.load import load_system
from hemeplm.data.tokens import KIND_LIGAND
from hemeplm.errors import HemeplmError

AROMATIC = len(ELEMENTS) + 1  # column of the aromatic flag
CHARGE = -1
RING = {"C1", "C2", "C3", "C5", "C6", "C7"}


@pytest.fixture(scope="module")
def system():
    return load_system(PRMTOP, [PDB])


def _features(system, ligand_file=None, keep=None):
    keep = system.source_index[system.ligand] if keep is None else keep
    return ligand_features(system.full_topology, system.full_ligand, system.full_first_frame, keep,
                           charges=system.full_charges, ligand_file=ligand_file)


def _names(system):
    return [system.topology.atom(int(i)).name for i in system.ligand]


def _mol2_sections(text: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """Lines before ATOM, ATOM lines, BOND lines, lines from SUBSTRUCTURE on."""
    head, rest = text.split("@<TRIPOS>ATOM\n")
    atoms, rest = rest.split("@<TRIPOS>BOND\n")
    bonds, tail = rest.split("@<TRIPOS>SUBSTRUCTURE")
    return head.splitlines(), atoms.splitlines(), [b for b in bonds.splitlines() if b.strip()], \
        ("@<TRIPOS>SUBSTRUCTURE" + tail).splitlines()


def _write_mol2(path, head, atoms, bonds, tail):
    path.write_text("\n".join(head + ["@<TRIPOS>ATOM"] + atoms + ["@<TRIPOS>BOND"] + bonds + tail) + "\n")
    return path


def test_xylene_from_topology(system):
    assert _names(system) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"]
    lig = _features(system)
    assert lig["charge_source"] == "topology"
    assert lig["features"].shape[0] == N_LIGAND_HEAVY
    assert [ELEMENTS[e] for e in lig["element"]] == ["C"] * N_LIGAND_HEAVY
    aromatic = {n for n, f in zip(_names(system), lig["features"]) if f[AROMATIC] == 1}
    assert aromatic == RING
    names = _names(system)
    bonds = {frozenset((names[a], names[b])) for a, b in lig["bonds"].T}
    assert bonds == {frozenset(p) for p in [("C1", "C2"), ("C1", "C3"), ("C1", "C4"), ("C2", "C5"), ("C3", "C6"),
                                           ("C5", "C7"), ("C6", "C7"), ("C7", "C8")]}  # six ring bonds, two methyls
    assert abs(lig["charge"].sum()) < 1e-3  # hydrogen charges folded onto carbons: neutral
    np.testing.assert_allclose(lig["features"][:, CHARGE], lig["charge"])


def test_xylene_from_mol2(system):
    top = _features(system)
    lig = _features(system, MOL2)
    assert lig["charge_source"] == "file"
    np.testing.assert_array_equal(lig["features"][:, :CHARGE], top["features"][:, :CHARGE])
    assert {tuple(sorted(b)) for b in lig["bonds"].T} == {tuple(sorted(b)) for b in top["bonds"].T}
    # the mol2 holds AM1-BCC charges; methyl C + 3 H must add up to what the file says
    charges = {line.split()[1]: float(line.split()[-1]) for line in _mol2_sections(MOL2.read_text())[1]}
    c4 = charges["C4"] + charges["H3"] + charges["H4"] + charges["H5"]
    assert lig["charge"][_names(system).index("C4")] == pytest.approx(c4, abs=1e-4)


def test_mol2_atoms_matched_by_name(system, tmp_path):
    head, atoms, bonds, tail = _mol2_sections(MOL2.read_text())
    order = list(reversed(range(len(atoms))))  # file position -> original atom
    new_id = {order[k] + 1: k + 1 for k in range(len(order))}
    atoms = [f"{k + 1:7d} " + " ".join(atoms[i].split()[1:]) for k, i in enumerate(order)]
    bonds = [f"{k + 1:6d} {new_id[int(b.split()[1])]:4d} {new_id[int(b.split()[2])]:4d} {b.split()[3]}"
             for k, b in enumerate(bonds)]
    reordered = _write_mol2(tmp_path / "reversed.mol2", head, atoms, bonds, tail)
    ref, lig = _features(system, MOL2), _features(system, reordered)
    np.testing.assert_array_equal(lig["features"], ref["features"])
    np.testing.assert_array_equal(lig["charge"], ref["charge"])


def test_heavy_atom_sdf(system, tmp_path):
    from rdkit import Chem

    from hemeplm.data.ligand import _read_mol2

    sdf = tmp_path / "xylene.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        w.write(Chem.RemoveHs(_read_mol2(MOL2)))
    lig = _features(system, sdf)
    assert lig["charge_source"] == "topology"
    np.testing.assert_array_equal(lig["features"], _features(system)["features"])


def test_mismatched_ligand_file(system, tmp_path):
    from rdkit import Chem

    head, atoms, bonds, tail = _mol2_sections(MOL2.read_text())
    fields = atoms[0].split()
    fields[5] = "n"  # C1 typed as a GAFF nitrogen
    wrong = _write_mol2(tmp_path / "wrong_element.mol2", head, [" ".join(fields)] + atoms[1:], bonds, tail)
    with pytest.raises(HemeplmError, match="elements differ") as info:
        _features(system, wrong)
    assert str(wrong) in str(info.value)

    methane = tmp_path / "methane.sdf"
    with Chem.SDWriter(str(methane)) as w:
        w.write(Chem.AddHs(Chem.MolFromSmiles("C")))
    with pytest.raises(HemeplmError, match="has 5 atoms but the ligand selection has 18 \\(8 heavy\\)") as info:
        _features(system, methane)
    assert str(methane) in str(info.value)

    with pytest.raises(HemeplmError, match="unknown ligand file format") as info:
        _features(system, PDB)
    assert str(PDB) in str(info.value)


def test_heavy_atom_file_with_hydrogens_kept(tmp_path):
    from rdkit import Chem

    from hemeplm.data.ligand import _read_mol2

    system = load_system(PRMTOP, [PDB], hydrogens=True)
    sdf = tmp_path / "xylene.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        w.write(Chem.RemoveHs(_read_mol2(MOL2)))
    with pytest.raises(HemeplmError, match="no hydrogens") as info:
        _features(system, sdf)
    assert str(sdf) in str(info.value)
    lig = _features(system, MOL2)
    assert len(lig["features"]) == 18 and abs(lig["charge"].sum()) < 1e-3


def test_protein_only(t4l_dcd):
    feats = build_features(DataConfig(topology=str(PRMTOP), trajectories=[str(t4l_dcd)], ligand="none"))
    assert not feats["is_ligand"].any()
    assert (feats["layout"]["kind"] == KIND_LIGAND).sum() == 0
    assert feats["charge_source"] == "none"
    assert feats["n_atoms"] == 1298 - N_LIGAND_HEAVY
