"""AI2BMD-style fragmentation: ACE-X-NME units minus ACE-NME overlaps count every atom and bond once, the
recombined forces are minus the gradient of the recombined energy (link atoms by the chain rule) whether the
fragments come from GFN2-xTB or from a model (with Amber14's or GFN2-xTB's charges between distant residues),
the GFN2-xTB charges add up to the peptide's, a fragment set labels every fragment, and a model trained on one
predicts the whole peptide through ``hemeplm energies``."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from hemeplm.data.molecules import amber14_system, build_molecule, from_sequence, read_datasets
from hemeplm.data.parameters import pair_parameters
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.fragmentation import (LINK_LENGTH, Fragmented, fragment_charges, fragment_positions, fragments,
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


@pytest.mark.parametrize("long_range,by", [(None, "gfn2"), ("mm", "gfn2"), ("mm", "model"), ("gfn2", "model")])
def test_fragmented_forces_are_minus_the_gradient(tripeptide, long_range, by):
    model = tiny_molecular_model() if by == "model" else None
    frag = Fragmented(tripeptide.topology, tripeptide.numbers, long_range, model=model, reference=tripeptide.positions)
    if model is not None:  # each fragment is the model's energy of that fragment alone
        part = frag.parts[1]
        pos = fragment_positions(tripeptide.positions, part, tripeptide.numbers)[None]
        assert frag.calcs[1](pos)[0][0] == pytest.approx(float(model(torch.as_tensor(part.numbers),
                                                                     torch.as_tensor(pos))[0].detach()))
    x = tripeptide.positions + np.random.default_rng(0).normal(0, 0.05, tripeptide.positions.shape)
    _, f = frag(x)
    frames = np.stack([x, x + 0.01])  # frames at once: each as on its own
    both = frag(frames)
    assert both[0][0] == pytest.approx(frag(x)[0]) and both[0][1] == pytest.approx(frag(frames[1])[0])
    np.testing.assert_allclose(both[1][1], frag(frames[1])[1], atol=1e-9)
    if long_range is not None:  # residues 1 and 3 share no fragment: their pairs carry the long-range terms
        assert len(frag.pairs[0]) > 0 and frag.long_range(x)[0] != 0.0
    h = 1e-3
    for atom, k in [(0, 0), (5, 1), (12, 2)]:  # atoms at cut bonds get link-atom forces too
        xp, xm = x.copy(), x.copy()
        xp[atom, k] += h
        xm[atom, k] -= h
        assert -(frag(xp)[0] - frag(xm)[0]) / (2 * h) == pytest.approx(f[atom, k], abs=0.01)


def test_gfn2_charges_add_up_to_the_peptide_and_weaken_amber_s(tripeptide):
    parts = fragments(tripeptide.topology, tripeptide.numbers)
    frames = tripeptide.positions + np.random.default_rng(1).normal(0, 0.05, (3, *tripeptide.positions.shape))
    q = fragment_charges(parts, tripeptide.numbers, frames)
    assert q.sum() == pytest.approx(sum(p.charge for p in parts), abs=1e-6)  # +1 and -1 termini: neutral
    names = [a.name for a in tripeptide.topology.atoms]
    amber = pair_parameters(amber14_system(tripeptide.topology)).charge
    carbonyl = [k for k, n in enumerate(names) if n == "O"]
    assert (q[carbonyl] < 0).all() and (np.abs(q[carbonyl]) < np.abs(amber[carbonyl])).all()
    one = fragment_charges(parts, tripeptide.numbers, frames[:1])  # one frame: that frame's own charges
    part = parts[1]
    gfn2 = GFN2(part.numbers, part.charge)
    gfn2(fragment_positions(frames[0], part, tripeptide.numbers))
    alone = [k for k in range(len(part.atoms)) if all(part.atoms[k] not in p.atoms for p in parts if p is not part)]
    np.testing.assert_allclose(one[part.atoms[alone]], gfn2.charges[alone], atol=1e-8)
    assert not np.allclose(one, q)
    with pytest.raises(ValueError, match="reference"):
        Fragmented(tripeptide.topology, tripeptide.numbers, "gfn2")


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
    frag = Fragmented(data.topology, data.numbers, "gfn2", model, reference=data.positions[:3])  # charges: the 3 frames
    e1, f1 = frag(data.positions[1])
    assert energy.shape == (3,) and forces.shape == (3, 138, 3)
    assert energy[1] == pytest.approx(e1, abs=1e-3) and np.abs(forces[1] - f1).max() < 1e-3
    metrics = json.loads((out / "compare" / "metrics.json").read_text())
    offset = float((energy - data.energy[:3]).mean())  # the fragments' zero is not the peptide's
    assert metrics["energy_offset"] == pytest.approx(offset, abs=1e-6) and metrics["n_frames"] == 3
    assert metrics["relative_energy_mae"] == pytest.approx(np.abs(energy - offset - data.energy[:3]).mean(), abs=1e-6)
    assert metrics["mean_baseline_energy_mae"] == pytest.approx(np.abs(data.energy[:3] - data.energy[:3].mean()).mean())
    # tools/qm_benchmark.py puts the model's fragments beside GFN2-xTB's, each without and with either long range
    spec = importlib.util.spec_from_file_location("qm_benchmark", ROOT / "tools" / "qm_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.fragmentation(2, str(ckpt))
    assert [r["method"] for r in rows[1:7]] == [f"fragments by {level}{long}" for level in ("GFN2-xTB", "the model")
                                                for long in ("", " + Amber14 long-range",
                                                             " + long-range with GFN2-xTB charges")]
    assert all(r["frames"] == 2 and np.isfinite(r["force_r2"]) for r in rows[1:7])
    assert rows[2]["energy_mae_after_offset"] != rows[3]["energy_mae_after_offset"]
    # a molecule that is no peptide is refused, naming the file
    with pytest.raises(SystemExit):
        main(["energies", "--ckpt", str(ckpt), "--topology", "data/qm/ethanol/topology.pdb", "--frames",
              "data/qm/ethanol/traj.dcd", "--out", str(tmp_path / "x")])
    assert "data/qm/ethanol/topology.pdb" in capsys.readouterr().err
