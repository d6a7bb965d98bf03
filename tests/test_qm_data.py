"""Molecule data sets (``hemeplm dataset``): molecules built from nothing downloaded, GFN2-xTB labels that
are the energies and forces of the frames written, and splits in contiguous time blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hemeplm.data import molecules
from hemeplm.forcefield import qm

pytest.importorskip("tblite")


def test_molecules_are_built_with_hydrogens():
    eth = molecules.build_molecule("ethanol")
    assert sorted(eth.numbers.tolist()) == [1] * 6 + [6, 6, 8] and eth.topology.n_bonds == 8 and eth.charge == 0
    assert len(molecules.build_molecule("p-xylene").numbers) == 18
    ala = molecules.build_molecule("alanine-dipeptide")
    assert [r.name for r in ala.topology.residues] == ["ACE", "ALA", "NME"] and ala.topology.n_atoms == 22
    assert ala.charge == 0
    chig = molecules.build_molecule("chignolin")
    assert "".join(r.code for r in chig.topology.residues) == "GYDPETGTWG"
    assert chig.topology.n_atoms == 138 and chig.charge == -2  # NH3+ ... ASP- GLU- ... COO-
    assert molecules.residue_charges(chig.topology).tolist() == [1, 0, -1, 0, -1, 0, 0, 0, 0, -1]
    d = np.linalg.norm(chig.positions[:, None] - chig.positions[None], axis=-1)
    assert d[np.triu_indices(len(d), 1)].min() > 0.8  # no clashes in the built chain


def test_time_blocks_are_contiguous():
    codes = molecules.time_blocks(20)
    assert codes.tolist() == [0] * 16 + [1] * 2 + [2] * 2


def _check_labels(data, frames, atol_e=1e-3, atol_f=1e-2):
    gfn2 = qm.GFN2(data.numbers, data.meta["charge"])
    for i in frames:
        e, f = gfn2(data.positions[i])
        assert e == pytest.approx(data.energy[i], abs=atol_e)
        np.testing.assert_allclose(f, data.forces[i], atol=atol_f)


def test_small_molecule_dataset_holds_gfn2_labels_of_its_frames(tmp_path, capsys):
    from hemeplm.cli import main

    out = tmp_path / "ethanol"
    args = ["dataset", "--molecule", "ethanol", "--out", str(out), "--frames", "10", "--stride", "2",
            "--equilibration", "10", "--quiet"]
    main(args)
    assert "20 frames {'train': 16, 'val': 2, 'test': 2}" in capsys.readouterr().out
    data = molecules.read_dataset(out)
    assert data.positions.shape == (20, 9, 3) and data.meta["temperatures_K"] == [300.0, 600.0]
    for r in (0, 1):
        assert data.split[data.run == r].tolist() == [0] * 8 + [1, 2]
    assert data.temperature.tolist() == [300.0] * 10 + [600.0] * 10
    _check_labels(data, [0, 9, 15])  # the dynamics' evaluations equal a fresh SCF at the written coordinates
    assert set(data.meta["cost_s"]) == {"build", "sampling", "labelling", "total"}
    with pytest.raises(SystemExit):
        main(args)
    assert "pass --force" in capsys.readouterr().err


def test_peptide_dataset_is_sampled_with_amber_and_labelled_with_gfn2(tmp_path):
    out = qm.make_dataset("alanine-dipeptide", tmp_path / "ala", frames=10, stride=20, equilibration=20,
                          temperatures=(300.0,), progress=False)
    data = molecules.read_dataset(out)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["failed_frames"] == [] and "Amber14" in meta["sampling"] and data.positions.shape == (10, 22, 3)
    assert [r.name for r in data.topology.residues] == ["ACE", "ALA", "NME"]
    _check_labels(data, [0, 9])
    assert np.ptp(data.energy) > 1.0  # the frames differ
