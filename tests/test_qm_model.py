"""The molecular energy model: depends on elements and positions only (atoms in any order, any rotation),
forces are its gradient, ``train.py`` trains it on a data set made on the fly, ``hemeplm energies`` predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hemeplm.data import molecules
from hemeplm.forcefield import qm
from hemeplm.models.molecular import MolecularEnergy
from conftest import random_rotations, tiny_molecular_model, write_dcd

pytest.importorskip("tblite")


def test_energy_depends_on_elements_and_positions_only():
    mol = molecules.build_molecule("ethanol")
    z = torch.as_tensor(mol.numbers)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(mol.positions[None] + rng.normal(0, 0.1, (3, *mol.positions.shape)))
    model = tiny_molecular_model()
    e, f = model.energy_and_forces(z, x)
    perm = torch.as_tensor(rng.permutation(len(z)))
    e_p, f_p = model.energy_and_forces(z[perm], x[:, perm])
    torch.testing.assert_close(e_p, e)
    torch.testing.assert_close(f_p, f[:, perm])
    rot = torch.as_tensor(random_rotations(1, rng)[0])
    e_r, f_r = model.energy_and_forces(z, x @ rot.T + 3.0)
    torch.testing.assert_close(e_r, e)
    torch.testing.assert_close(f_r, f @ rot.T)
    # forces are minus the gradient: central differences in float64
    h = 1e-5
    for atom, k in [(0, 0), (4, 2), (8, 1)]:
        xp, xm = x[:1].clone(), x[:1].clone()
        xp[0, atom, k] += h
        xm[0, atom, k] -= h
        fd = -(model(z, xp) - model(z, xm)) / (2 * h)
        assert float(fd.detach()) == pytest.approx(float(f[0, atom, k]), abs=1e-6)
    assert float(f.abs().max()) > 1e-3


def test_train_py_makes_the_data_set_trains_and_energies_predict_in_any_atom_order(tmp_path, monkeypatch, capsys):
    from hemeplm.cli import main
    from hemeplm.cli.train import main as train_main

    monkeypatch.setitem(qm.SAMPLING, "small", {**qm.SAMPLING["small"], "frames": 20, "stride": 2,
                                               "equilibration": 10})
    data = tmp_path / "data" / "ethanol"
    train_main(["--config", "configs/qm_ethanol.yaml", "name=t", f"out_dir={tmp_path / 'runs'}", "max_steps=20",
                "eval_every=10", f"qm.dataset={data}", "encoder.hidden=16", "encoder.layers=2", "optim.batch_size=4",
                "optim.warmup_steps=2", "optim.lr=5e-3"])
    printed = capsys.readouterr().out
    assert "test block (4 frames)" in printed and (data / "dataset.json").exists()
    run = tmp_path / "runs" / "t"
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["steps"] == 20 and list(test["molecules"]) == ["ethanol"]
    test = test["molecules"]["ethanol"]
    assert np.isfinite(test["energy_mae"]) and "mean_baseline_force_mae" in test and test["n_test_frames"] == 4
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val" in r] == [10, 20]
    # the same frames with the atoms in another order (topology and coordinates permuted together)
    ds = molecules.read_dataset(data)
    perm = np.random.default_rng(1).permutation(len(ds.numbers))
    import mdtraj

    top = mdtraj.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    old = list(ds.topology.atoms)
    new = {int(i): top.add_atom(old[i].name, old[i].element, residue) for i in perm}
    for a, b in ds.topology.bonds:
        top.add_bond(new[a.index], new[b.index])
    mdtraj.Trajectory((ds.positions[:, perm] / 10).astype(np.float32), top).save_pdb(str(tmp_path / "perm.pdb"))
    write_dcd(tmp_path / "perm.dcd", ds.positions[:, perm] / 10)
    main(["energies", "--ckpt", str(run / "ckpt.pt"), "--topology", str(data / "topology.pdb"), "--frames",
          str(data / "traj.dcd"), "--out", str(tmp_path / "a"), "--compare"])
    main(["energies", "--ckpt", str(run / "ckpt.pt"), "--topology", str(tmp_path / "perm.pdb"), "--frames",
          str(tmp_path / "perm.dcd"), "--out", str(tmp_path / "b")])
    with np.load(tmp_path / "a" / "energies.npz") as a, np.load(tmp_path / "b" / "energies.npz") as b:
        assert a["energy_kcal_mol"].shape == (40,) and a["forces_kcal_mol_A"].shape == (40, 9, 3)
        np.testing.assert_allclose(b["energy_kcal_mol"], a["energy_kcal_mol"], atol=5e-3)  # float32 sums of ~-7000
        np.testing.assert_allclose(b["forces_kcal_mol_A"], a["forces_kcal_mol_A"][:, perm], rtol=1e-3, atol=1e-5)
        assert np.abs(a["forces_kcal_mol_A"]).max() > 1e-2  # (20 steps: the forces are still small)
    metrics = json.loads((tmp_path / "a" / "compare" / "metrics.json").read_text())
    assert metrics["n_frames"] == 40 and metrics["force_mae"] < metrics["mean_baseline_force_mae"]
    # a checkpoint written before one model could learn several molecules predicts the same
    from hemeplm.train.checkpoint import load_checkpoint, save_checkpoint

    old = load_checkpoint(run / "ckpt.pt")
    old["static"] = {"numbers": old["static"]["molecules"]["ethanol"], "molecule": "ethanol", "dataset": str(data)}
    old["config"]["qm"] |= {"molecule": "ethanol", "dataset": None}
    save_checkpoint(tmp_path / "old.pt", old)
    main(["energies", "--ckpt", str(tmp_path / "old.pt"), "--topology", str(data / "topology.pdb"), "--frames",
          str(data / "traj.dcd"), "--out", str(tmp_path / "old"), "--compare"])
    with np.load(tmp_path / "a" / "energies.npz") as a, np.load(tmp_path / "old" / "energies.npz") as b:
        np.testing.assert_array_equal(b["energy_kcal_mol"], a["energy_kcal_mol"])
    old_metrics = json.loads((tmp_path / "old" / "compare" / "metrics.json").read_text())
    assert old_metrics["mean_baseline_energy_mae"] == pytest.approx(metrics["mean_baseline_energy_mae"], abs=1e-2)
    # another molecule is refused, naming both
    molecules.build_molecule("propane").save_pdb(tmp_path / "propane.pdb")
    with pytest.raises(SystemExit):
        main(["energies", "--ckpt", str(run / "ckpt.pt"), "--topology", str(tmp_path / "propane.pdb"), "--frames",
              str(tmp_path / "perm.dcd"), "--out", str(tmp_path / "c")])
    assert "holds C3H8, but the model was trained on ethanol (C2H6O)" in capsys.readouterr().err
    # a frame range past the end is refused as for the generative model's energies, nothing written
    with pytest.raises(SystemExit):
        main(["energies", "--ckpt", str(run / "ckpt.pt"), "--topology", str(tmp_path / "perm.pdb"), "--frames",
              str(tmp_path / "perm.dcd"), "--out", str(tmp_path / "d"), "--stop", "41"])
    assert capsys.readouterr().err.strip().endswith("--stop 41 is out of range: it has 40 frames (0..39)")
    assert not (tmp_path / "d").exists()


def test_statistics_start_every_molecule_at_its_training_mean():
    """Per-element energies fitted by least squares over the molecules' compositions: with more elements than
    molecules (ethanol C2H6O, propane C3H8) both means are met exactly, and the model with its atom outputs zeroed
    predicts them."""
    model = MolecularEnergy(hidden=16, layers=2, num_rbf=8, cutoff=4.0).double()
    torch.nn.init.zeros_(model.out[-1].weight)
    torch.nn.init.zeros_(model.out[-1].bias)
    sets = []
    for name, mean in (("ethanol", -7000.0), ("propane", -6300.0)):
        mol = molecules.build_molecule(name)
        z = torch.as_tensor(mol.numbers)
        pos = torch.as_tensor(mol.positions[None].repeat(3, 0))
        energy = torch.tensor([mean - 1.0, mean, mean + 1.0], dtype=torch.float64)
        forces = torch.full(pos.shape, 2.0, dtype=torch.float64)
        sets.append((z, pos, energy, forces))
    model.fit_statistics([(z, energy, forces) for z, _, energy, forces in sets])
    assert float(model.scale) == pytest.approx(2.0)
    for z, pos, energy, _ in sets:
        torch.testing.assert_close(model(z, pos), energy.mean().expand(3))
    # four molecules over three elements (C, H, O): the zeros are the least-squares fit, residuals orthogonal
    # to every element's counts
    names = ("ethanol", "propane", "acetone", "p-xylene")
    means = torch.tensor([-7000.0, -6300.0, -8100.0, -13200.0], dtype=torch.float64)
    numbers = [torch.as_tensor(molecules.build_molecule(n).numbers) for n in names]
    model.fit_statistics([(z, m.expand(2), torch.ones(2, len(z), 3)) for z, m in zip(numbers, means)])
    counts = torch.stack([torch.stack([(z == e).sum() for e in (1, 6, 8)]) for z in numbers]).double()
    residual = torch.stack([model.shift[z].sum() for z in numbers]).double() - means
    assert float(residual.abs().max()) > 1.0  # not met exactly ...
    torch.testing.assert_close(counts.T @ residual, torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_one_model_across_two_molecules(tmp_path, monkeypatch, capsys):
    """``qm.molecule`` as a list trains one model on both data sets (each step one molecule's batch), scores each
    test block, and ``hemeplm energies`` predicts for either molecule with the one checkpoint."""
    from hemeplm.cli import main
    from hemeplm.cli.train import main as train_main

    monkeypatch.setitem(qm.SAMPLING, "small", {**qm.SAMPLING["small"], "frames": 20, "stride": 2,
                                               "equilibration": 10})
    data = [tmp_path / "data" / name for name in ("ethanol", "propane")]
    run_args = ["--config", "configs/qm_all.yaml", "name=t", f"out_dir={tmp_path / 'runs'}", "eval_every=4",
                "qm.molecule=[ethanol, propane]", f"qm.dataset=[{data[0]}, {data[1]}]", "qm.draw_weights=[]",
                "optim.lr=5e-3", "encoder.hidden=16", "encoder.layers=2", "qm.batch_atoms=40", "optim.warmup_steps=2"]
    train_main(run_args + ["max_steps=20"])
    printed = capsys.readouterr().out
    assert "of 9 atoms, batches of 4" in printed and "of 11 atoms, batches of 3" in printed
    assert "ethanol, test block (4 frames)" in printed and "propane, test block (4 frames)" in printed
    run = tmp_path / "runs" / "t"
    test = json.loads((run / "test_metrics.json").read_text())
    assert list(test["molecules"]) == ["ethanol", "propane"]
    assert all((run / "figures" / f"{m}_{q}_parity.png").stat().st_size > 1000 for m in ("ethanol", "propane")
               for q in ("energy", "force"))
    val = [r["val"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val" in r]
    assert len(val) == 5 and all(list(v) == ["ethanol", "propane"] for v in val)
    for folder in data:
        out = tmp_path / "e" / folder.name
        main(["energies", "--ckpt", str(run / "ckpt.pt"), "--topology", str(folder / "topology.pdb"), "--frames",
              str(folder / "traj.dcd"), "--out", str(out), "--compare"])
        metrics = json.loads((out / "compare" / "metrics.json").read_text())
        assert metrics["n_frames"] == 40 and metrics["force_mae"] < metrics["mean_baseline_force_mae"]
    # resuming continues from the saved step with the saved optimiser state, to the new max_steps
    train_main(["--resume"] + run_args + ["max_steps=24"])
    assert f"resumed {run / 'ckpt.pt'} at step 20" in capsys.readouterr().out
    assert json.loads((run / "test_metrics.json").read_text())["steps"] == 24
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val" in r][-2:] == [20, 24]
    # a list of folders that does not match the molecules is refused, naming the key
    with pytest.raises(SystemExit):
        train_main(["--config", "configs/qm_all.yaml", "name=u", f"out_dir={tmp_path / 'runs'}",
                    "qm.molecule=[ethanol, propane]", f"qm.dataset=[{data[0]}]"])
    assert "'qm.dataset' must name one folder per molecule" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--config", "configs/qm_all.yaml", "name=u", "qm.molecule=[ethanol, ethanol]"])
    assert "'qm.molecule' names a molecule twice" in capsys.readouterr().err
    # resuming with other molecules is refused, naming those it was trained on
    with pytest.raises(SystemExit):
        train_main(["--config", "configs/qm_all.yaml", "--resume", "name=t", f"out_dir={tmp_path / 'runs'}",
                    "qm.molecule=[ethanol]", f"qm.dataset=[{data[0]}]", "qm.draw_weights=[]", "encoder.hidden=16",
                    "encoder.layers=2"])
    assert "was trained on ethanol, propane; resume it with the same qm.molecule" in capsys.readouterr().err


def fit_drawn(monkeypatch, cfg, **fit_kw) -> list[tuple[int, int]]:
    """(atoms, frames) of each batch ``fit`` draws for ``cfg`` (its ``max_steps``) from eight noisy frames each of
    ethanol (9 atoms) and propane (11), a tiny model; ``fit_kw`` goes to ``fit``."""
    from hemeplm.train.molecular import fit

    sets = []
    for name in ("ethanol", "propane"):
        mol = molecules.build_molecule(name)
        pos = mol.positions[None].repeat(8, 0) + np.random.default_rng(0).normal(0, 0.05, (8, len(mol.numbers), 3))
        sets.append((mol.numbers, {"positions": pos, "energy": np.linspace(0.0, 1.0, 8),
                                   "forces": np.ones(pos.shape)}))
    drawn = []
    call = MolecularEnergy.energy_and_forces
    monkeypatch.setattr(MolecularEnergy, "energy_and_forces",
                        lambda self, z, pos, **kw: drawn.append((len(z), len(pos))) or call(self, z, pos, **kw))
    model = MolecularEnergy(hidden=16, layers=2, num_rbf=8, cutoff=4.0)
    assert fit(model, sets, cfg, **fit_kw)["step"] == cfg.max_steps
    return drawn


def test_batch_atoms_gives_each_molecule_batches_of_about_equal_cost(monkeypatch):
    """With ``qm.batch_atoms`` each molecule's batch holds as many frames as that many atoms hold (at least one),
    and ``fit`` draws batches of those sizes, the molecules in turn; without it, ``optim.batch_size`` each."""
    from hemeplm.config import load_config
    from hemeplm.errors import HemeplmError
    from hemeplm.train.molecular import batch_sizes

    cfg = load_config("configs/qm_all.yaml", ["qm.batch_atoms=40", "max_steps=6", "optim.warmup_steps=1"])
    assert batch_sizes(cfg, [9, 11, 22, 138]) == [4, 3, 1, 1]
    plain = load_config("configs/qm_all.yaml", ["optim.batch_size=5", "qm.batch_atoms=0"])
    assert batch_sizes(plain, [9, 138]) == [5, 5]
    with pytest.raises(HemeplmError, match="'qm.batch_atoms' must be at least 0"):
        load_config("configs/qm_all.yaml", ["qm.batch_atoms=-1"])
    assert fit_drawn(monkeypatch, cfg) == [(9, 4), (11, 3)] * 3


def test_draw_weights_give_a_molecule_more_batches_spread_through_each_turn(monkeypatch):
    """``qm.draw_weights`` gives each molecule that many batches per turn, spread evenly (every fragment of a
    fragment set its set's weight), and ``fit`` follows the turn; a list of the wrong length or a weight below 1
    is refused naming the key."""
    from hemeplm.config import load_config
    from hemeplm.errors import HemeplmError
    from hemeplm.train.molecular import draw_order, set_weights

    assert draw_order([1, 1, 1]) == [0, 1, 2]
    assert draw_order([1, 3]) == [1, 0, 1, 1]
    assert sorted(draw_order([2, 1, 3])) == [0, 0, 1, 2, 2, 2]
    cfg = load_config("configs/qm_all.yaml", ["qm.molecule=[ethanol,chignolin-fragments]", "qm.draw_weights=[2,1]",
                                              "max_steps=6", "optim.warmup_steps=1"])
    assert set_weights(cfg, ["ethanol", "chignolin-fragments/f1", "chignolin-fragments/f2"]) == [2, 1, 1]
    assert set_weights(load_config("configs/qm_all.yaml", ["qm.draw_weights=[]"]), ["ethanol", "propane"]) == [1, 1]
    for bad in ("[1,2]", "[1,1,1,1,0,1]", "[1,1,1,1,1.5,1]"):
        with pytest.raises(HemeplmError, match=r"'qm.draw_weights' must give one whole number of at least 1 .*"
                                               r"qm.draw_weights=\[\] draws each molecule once"):
            load_config("configs/qm_all.yaml", [f"qm.draw_weights={bad}"])
    # the shipped config weighs its six molecules: another list of molecules needs its own weights, or none
    with pytest.raises(HemeplmError, match="'qm.draw_weights' must give one whole number"):
        load_config("configs/qm_all.yaml", ["qm.molecule=[ethanol,propane]"])
    assert [atoms for atoms, _ in fit_drawn(monkeypatch, cfg, draw_weights=[2, 1])] == [9, 11, 9] * 2
    with pytest.raises(ValueError, match="draw_weights gives 3 weights for 2 data sets"):
        fit_drawn(monkeypatch, cfg, draw_weights=[2, 1, 1])
