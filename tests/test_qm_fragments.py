"""AI2BMD-style fragmentation: ACE-X-NME units minus ACE-NME overlaps count every atom and bond once, the
recombined forces are minus the gradient of the recombined energy (link atoms by the chain rule) whether the
fragments come from GFN2-xTB or from a model, a fragment set labels every fragment, and a model trained on one
predicts the whole peptide through ``hemeplm energies``."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from hemeplm.data.molecules import build_molecule, from_sequence, read_datasets
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.fragmentation import (LINK_LENGTH, Fragmented, fragment_positions, fragments,
                                              make_fragment_datasets)
from hemeplm.forcefield.qm import GFN2
from conftest import ROOT, tiny_molecular_model

pytest.importorskip("tblite")


@pytest.fixture(scope="module")
def tripeptide():
    return from_sequence("GAG", "GAG", capped=False)


def test_units_and_overlaps_count_every_atom_and_bond_once(tripeptide):
    parts = fragments(tripeptide.topology, tripeptide.numbers)
    assert [(p.name, p.charge, p.sign) for p in parts] == [
        ("ACE-GLY1-NME", 1, 1), ("ACE-ALA2-NME", 0, 1), ("ACE-GLY3-NME", -1, 1), ("ACE-NME 1/2", 0, -1),
        ("ACE-NME 2/3", 0, -1)]
    assert all(len(p.numbers) == 12 for p in parts if p.sign < 0)  # N-methylacetamide, C3H7NO
    counts = np.zeros(len(tripeptide.numbers))
    for p in parts:
        counts[p.atoms] += p.sign
    assert (counts == 1).all()
    for a, b in tripeptide.topology.bonds:
        assert sum(p.sign for p in parts if a.index in p.atoms and b.index in p.atoms) == 1


@pytest.mark.parametrize("long_range,by", [(None, "gfn2"), ("mm", "gfn2"), ("mm", "model")])
def test_fragmented_forces_are_minus_the_gradient(tripeptide, long_range, by):
    model = tiny_molecular_model() if by == "model" else None
    frag = Fragmented(tripeptide.topology, tripeptide.numbers, long_range, model=model)
    if model is not None:  # each fragment is the model's energy of that fragment alone
        part = frag.parts[1]
        pos = fragment_positions(tripeptide.positions, part, tripeptide.numbers)[None]
        assert frag.calcs[1](pos)[0][0] == pytest.approx(float(model(torch.as_tensor(part.numbers),
                                                                     torch.as_tensor(pos))[0]))
    x = tripeptide.positions + np.random.default_rng(0).normal(0, 0.05, tripeptide.positions.shape)
    _, f = frag(x)
    frames = np.stack([x, x + 0.01])  # frames at once: each as on its own
    both = frag(frames)
    assert both[0][0] == pytest.approx(frag(x)[0]) and both[0][1] == pytest.approx(frag(frames[1])[0])
    np.testing.assert_allclose(both[1][1], frag(frames[1])[1], atol=1e-9)
    if long_range == "mm":  # residues 1 and 3 share no fragment: their pairs carry the force field's terms
        assert len(frag.pairs[0]) > 0 and frag.long_range(x)[0] != 0.0
    h = 1e-3
    for atom, k in [(0, 0), (5, 1), (12, 2)]:  # atoms at cut bonds get link-atom forces too
        xp, xm = x.copy(), x.copy()
        xp[atom, k] += h
        xm[atom, k] -= h
        assert -(frag(xp)[0] - frag(xm)[0]) / (2 * h) == pytest.approx(f[atom, k], abs=0.01)


@pytest.fixture(scope="module")
def fragment_set(tmp_path_factory):
    from hemeplm.cli import main

    out = tmp_path_factory.mktemp("sets") / "chignolin-fragments"
    main(["dataset", "--molecule", "chignolin-fragments", "--out", str(out), "--temperatures", "300", "--frames", "10",
          "--stride", "5", "--equilibration", "10", "--quiet"])
    return out


def test_a_fragment_set_labels_every_fragment_with_gfn2(fragment_set):
    mol = build_molecule("chignolin")
    parts = fragments(mol.topology, mol.numbers)
    sets = read_datasets(fragment_set)
    index = json.loads((fragment_set / "fragments.json").read_text())
    assert [d.meta["molecule"] for d in sets] == [f"chignolin-fragments/{p.name}" for p in parts]
    assert [(f["name"], f["sign"], f["charge"]) for f in index["fragments"]] == [(p.name, p.sign, p.charge)
                                                                               for p in parts]
    assert all(len(d.energy) == 10 and (d.split == [0] * 8 + [1, 2]).all() for d in sets)
    k = [p.name for p in parts].index("ACE-ASP3-NME")  # a charged unit: its own charge, -1
    d, part = sets[k], parts[k]
    assert part.charge == -1 and d.meta["charge"] == -1
    assert d.numbers.tolist() == part.numbers.tolist()  # the fragment's atoms, then its link hydrogens
    energy, forces = GFN2(part.numbers, part.charge)(d.positions[3])
    assert energy == pytest.approx(d.energy[3], abs=1e-3)
    np.testing.assert_allclose(forces, d.forces[3], atol=1e-2)
    inside = d.positions[:, :len(part.atoms)][:, np.searchsorted(part.atoms, part.links[:, 0])]
    lengths = np.linalg.norm(d.positions[:, len(part.atoms):] - inside, axis=-1)
    np.testing.assert_allclose(lengths, [[LINK_LENGTH[int(z)] for z in mol.numbers[part.links[:, 0]]]] * 10,
                               atol=1e-4)
    with pytest.raises(HemeplmError, match="would overwrite"):
        make_fragment_datasets("chignolin-fragments", fragment_set, temperatures=(300.0,), frames=10, progress=False)


def test_a_model_trained_on_fragments_predicts_the_whole_peptide(fragment_set, tmp_path, capsys):
    """``qm.molecule: [chignolin-fragments]`` trains on every fragment; ``hemeplm energies`` with that checkpoint
    recombines the whole chignolin from the model's fragments and scores relative energies against its labels."""
    from hemeplm.cli import main
    from hemeplm.cli.train import main as train_main
    from hemeplm.train.molecular import load_molecular

    train_main(["--config", "configs/qm_chignolin-fragments.yaml", "name=f", f"out_dir={tmp_path / 'runs'}",
                "max_steps=19", "eval_every=100", f"qm.dataset=[{fragment_set}]", "encoder.hidden=16",
                "encoder.layers=2", "optim.batch_size=2", "optim.warmup_steps=2"])
    assert "chignolin-fragments/ACE-TRP9-NME, test block (1 frames)" in capsys.readouterr().out
    ckpt = tmp_path / "runs" / "f" / "ckpt.pt"
    peptide = "data/qm/chignolin"
    out = tmp_path / "e"
    main(["energies", "--ckpt", str(ckpt), "--topology", f"{peptide}/topology.pdb", "--frames",
          f"{peptide}/traj.dcd", "--stop", "3", "--out", str(out), "--compare"])
    with np.load(out / "energies.npz") as z:
        energy, forces = z["energy_kcal_mol"], z["forces_kcal_mol_A"]
    model, _ = load_molecular(ckpt)
    data = read_datasets(peptide)[0]
    frag = Fragmented(data.topology, data.numbers, "mm", model)
    e1, f1 = frag(data.positions[1])
    assert energy.shape == (3,) and forces.shape == (3, 138, 3)
    assert energy[1] == pytest.approx(e1, abs=1e-3) and np.abs(forces[1] - f1).max() < 1e-3
    metrics = json.loads((out / "compare" / "metrics.json").read_text())
    offset = float((energy - data.energy[:3]).mean())  # the fragments' zero is not the peptide's
    assert metrics["energy_offset"] == pytest.approx(offset, abs=1e-6) and metrics["n_frames"] == 3
    assert metrics["relative_energy_mae"] == pytest.approx(np.abs(energy - offset - data.energy[:3]).mean(), abs=1e-6)
    assert metrics["mean_baseline_energy_mae"] == pytest.approx(np.abs(data.energy[:3] - data.energy[:3].mean()).mean())
    # tools/qm_benchmark.py puts the model's fragments beside GFN2-xTB's, each with and without the long range
    spec = importlib.util.spec_from_file_location("qm_benchmark", ROOT / "tools" / "qm_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.fragmentation(2, str(ckpt))
    assert [r["method"] for r in rows[1:5]] == [
        "fragments by GFN2-xTB", "fragments by GFN2-xTB + Amber14 long-range", "fragments by the model",
        "fragments by the model + Amber14 long-range"]
    assert all(r["frames"] == 2 and np.isfinite(r["force_r2"]) for r in rows[1:5])
    # a molecule that is no peptide is refused, naming the file
    with pytest.raises(SystemExit):
        main(["energies", "--ckpt", str(ckpt), "--topology", "data/qm/ethanol/topology.pdb", "--frames",
              "data/qm/ethanol/traj.dcd", "--out", str(tmp_path / "x")])
    assert "data/qm/ethanol/topology.pdb" in capsys.readouterr().err
