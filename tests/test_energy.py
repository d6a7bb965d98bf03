"""Energy labels and the learnt energy model: labels against an independent OpenMM computation,
forces as the energy's gradient, smoothness across cutoffs, a toy Lennard-Jones system learnt,
`hemeplm label` / `hemeplm energies`, and metrics that the mean cannot meet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PRMTOP, T4L

from hemeplm.forcefield import labels
from hemeplm.errors import HemeplmError
from hemeplm.evaluate.energy import interaction_metrics
from hemeplm.models.energy import EnergyModel


# ----------------------------------------------------------------------------- labels
def _nonbonded_energy(prmtop, xyz_nm: np.ndarray, silent: np.ndarray) -> float:
    """OpenMM's own NonbondedForce energy (vacuum, no cutoff) with the ``silent`` atoms' charges,
    LJ and exceptions switched off, kcal/mol."""
    import openmm
    from openmm import app, unit

    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    for i in reversed(range(system.getNumForces())):
        if not isinstance(system.getForce(i), openmm.NonbondedForce):
            system.removeForce(i)
    nb = system.getForce(0)
    off = set(int(i) for i in silent)
    for i in off:
        _, sigma, _ = nb.getParticleParameters(i)
        nb.setParticleParameters(i, 0.0, sigma, 0.0)
    for k in range(nb.getNumExceptions()):
        a, b, _, sigma, _ = nb.getExceptionParameters(k)
        if a in off or b in off:
            nb.setExceptionParameters(k, a, b, 0.0, sigma, 0.0)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(xyz_nm)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilocalorie_per_mole)


def test_interaction_labels_match_three_openmm_evaluations(t4l_xyz):
    """E_int(r, L) = E(r + L) - E(r) - E(L) from OpenMM, for the whole protein and for single residues."""
    import mdtraj
    from openmm import app

    prmtop = app.AmberPrmtopFile(str(PRMTOP))
    top = mdtraj.load_topology(str(PRMTOP))
    residue, names = labels.residue_labels(top)
    lig = top.select("resname TMP")
    params = labels.pair_parameters(labels.openmm_system(PRMTOP)[1])
    xyz = t4l_xyz.astype(np.float64)  # nm
    found = labels.residue_interactions(params, xyz[None] * 10.0, residue, lig, len(names))[0]
    everything = np.arange(top.n_atoms)
    protein = np.nonzero(residue >= 0)[0]
    alone = _nonbonded_energy(prmtop, xyz, np.setdiff1d(everything, lig))
    whole = (_nonbonded_energy(prmtop, xyz, np.setdiff1d(everything, np.concatenate([protein, lig])))
             - _nonbonded_energy(prmtop, xyz, np.setdiff1d(everything, protein)) - alone)
    assert found.sum() == pytest.approx(whole, abs=1e-3)
    assert found.min() < -1.0  # the pocket binds the xylene
    for r in (int(np.argmin(found)), names.index("ALA98")):
        atoms = np.nonzero(residue == r)[0]
        pair = (_nonbonded_energy(prmtop, xyz, np.setdiff1d(everything, np.concatenate([atoms, lig])))
                - _nonbonded_energy(prmtop, xyz, np.setdiff1d(everything, atoms)) - alone)
        assert found[r] == pytest.approx(pair, abs=1e-4)


def test_label_cli_writes_labels_the_loader_reads(t4l_dcd, tmp_path, capsys):
    from hemeplm.cli import main
    from hemeplm.data.load import load_system

    out = tmp_path / "labels"
    main(["label", str(PRMTOP), str(t4l_dcd), "--out", str(out), "--ligand", "resname TMP", "--quiet"])
    folder = out / t4l_dcd.stem
    with np.load(folder / "energies_forces.npz") as z:
        inter, names, energy = z["residue_interaction_kcal_mol"], list(z["residues"]), z["energy_kcal_mol"]
        assert z["forces_kcal_mol_A"].shape == (len(energy), 2621, 3)
    assert inter.shape == (len(energy), 162) and names[98] == "ALA99"  # the prmtop's own numbering (mdtraj alone says ALA98)
    assert json.loads((folder / "labels.json").read_text())["solvent"] == "implicit"
    system = load_system(PRMTOP, [folder / "traj.dcd"], ligand="resname TMP")
    np.testing.assert_allclose(system.interactions[0], inter)
    with pytest.raises(SystemExit):
        main(["label", str(PRMTOP), str(t4l_dcd), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert "would overwrite" in err and "energies_forces.npz" in err and "pass --force" in err


def test_labels_refuse_what_they_cannot_compute(tmp_path):
    pdb = tmp_path / "heavy.pdb"
    import mdtraj

    t = mdtraj.load(str(T4L / "complex.pdb"))
    t.atom_slice(t.topology.select("not element H")).save_pdb(str(pdb))
    with pytest.raises(HemeplmError, match="no hydrogens"):
        labels.openmm_system(pdb, solvent="vacuum")
    with pytest.raises(HemeplmError, match="implicit solvent"):
        labels.openmm_system(pdb, solvent="implicit")


# ----------------------------------------------------------------------------- the energy model
def _toy(n_res: int = 3, per_res: int = 4, n_lig: int = 3, seed: int = 0) -> dict:
    """A toy protein (residues of a few atoms in a row) and a small ligand beside it."""
    rng = np.random.default_rng(seed)
    n = n_res * per_res + n_lig
    prot = np.stack([np.arange(n_res * per_res) * 1.6, np.zeros(n_res * per_res), np.zeros(n_res * per_res)], 1)
    lig = np.stack([np.linspace(4.0, 7.0, n_lig), np.full(n_lig, 5.0), np.zeros(n_lig)], 1)
    bonds = np.array([[i, i + 1] for i in range(n_res * per_res - 1)]
                     + [[n_res * per_res + i, n_res * per_res + i + 1] for i in range(n_lig - 1)]).T
    return {"charge": rng.normal(scale=0.2, size=n), "element": np.ones(n, np.int64),
            "atom_type": np.arange(n) % 5, "is_ligand": np.arange(n) >= n_res * per_res,
            "protein_residue": np.where(np.arange(n) < n_res * per_res, np.arange(n) // per_res, -1),
            "bonds": bonds, "reference": np.concatenate([prot, lig])}


def _model(static: dict, seed: int = 0, randomise: bool = True, **kw) -> EnergyModel:
    torch.manual_seed(seed)
    n_res = int(static["protein_residue"].max()) + 1
    model = EnergyModel(static, n_res, n_atom_types=5, n_elements=2, hidden=8, layers=2, n_rbf=8, **kw).double()
    if randomise:  # the learnt terms start at zero; give them weight so that the tests see them
        with torch.no_grad():
            for p in (model.atom_out[-1].weight, model.pair_rbf.weight):
                p.normal_(std=0.5)
    return model


def test_forces_are_minus_the_energy_gradient():
    static = _toy()
    model = _model(static)
    pos = torch.as_tensor(static["reference"]) + 0.3 * torch.randn(2, *static["reference"].shape, dtype=torch.float64)
    pos.requires_grad_(True)
    forces = -torch.autograd.grad(model(pos)["total"].sum(), pos)[0].detach()
    h = 1e-5
    for f, a, k in [(0, 0, 0), (0, 5, 1), (1, 13, 2), (1, 7, 0)]:
        plus, minus = pos.detach().clone(), pos.detach().clone()
        plus[f, a, k] += h
        minus[f, a, k] -= h
        with torch.no_grad():
            fd = -(model(plus)["total"][f] - model(minus)["total"][f]) / (2 * h)
        assert float(forces[f, a, k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("crossing", [3.5, 5.0])  # the old hydrogen-bond switch and the cutoff
def test_energy_is_continuous_when_an_atom_crosses_a_distance(crossing):
    """Moving one ligand atom through a distance where a graph would switch edges changes the energy by
    no more than its slope allows between neighbouring points: no jump anywhere."""
    static = _toy(n_res=1, per_res=2, n_lig=1)
    model = _model(static, cutoff=5.0)
    base = torch.as_tensor(static["reference"])
    steps = torch.linspace(crossing - 0.01, crossing + 0.01, 201, dtype=torch.float64)
    frames = base.repeat(len(steps), 1, 1)
    frames[:, 2] = torch.stack([steps, torch.zeros_like(steps), torch.zeros_like(steps)], 1) + frames[:, 1]
    frames.requires_grad_(True)
    out = model(frames)
    for values in (out["total"], out["interaction"][:, 0]):
        slope = torch.autograd.grad(values.sum(), frames, retain_graph=True)[0][:, 2, 0].abs()
        allowed = 1.5 * torch.maximum(slope[1:], slope[:-1]) * float(steps[1] - steps[0]) + 1e-12
        assert bool((values.detach().diff().abs() <= allowed).all())


def test_learns_a_toy_lennard_jones_system_on_held_out_frames():
    """Per-residue interaction energies and the total energy of a toy system with pairwise LJ + Coulomb
    (unknown σ, ε per atom; known charges), learnt to R² ≥ 0.99 on frames it did not see."""
    static = _toy(n_res=3, per_res=4, n_lig=3, seed=1)
    rng = np.random.default_rng(2)
    n = len(static["charge"])
    truth = labels.PairParameters(static["charge"], rng.uniform(3.0, 3.8, n), rng.uniform(0.05, 0.2, n),
                                  None, None, None, {}, set())
    frames = static["reference"][None] + rng.normal(scale=0.25, size=(160, n, 3))
    frames[:, static["is_ligand"]] += rng.normal(scale=0.4, size=(160, 1, 3))  # the ligand moves as a body
    inter = labels.residue_interactions(truth, frames, static["protein_residue"], np.nonzero(static["is_ligand"])[0],
                                        3)
    pos = torch.as_tensor(frames)
    target = torch.as_tensor(inter)
    model = _model(static, randomise=False, cutoff=6.0)
    with torch.no_grad():
        model.residue_offset.copy_(target[:120].mean(0) - model(pos[:16])["interaction"].mean(0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    scale = float(target[:120].std())
    for _ in range(200):
        idx = torch.randint(0, 120, (16,))
        loss = ((model(pos[idx])["interaction"] - target[idx]) ** 2).mean() / scale ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(pos[120:])["interaction"].numpy()
    found = interaction_metrics(pred, inter[120:], inter[:120].mean(0), min_std=0.0)
    assert found["interaction_r2"] >= 0.99
    assert found["interaction_fluctuation_r2"] >= 0.99 > found["mean_baseline_interaction_fluctuation_r2"]


def test_interaction_metrics_see_through_the_mean():
    rng = np.random.default_rng(0)
    means = rng.normal(scale=3.0, size=8)
    true = means + rng.normal(scale=0.5, size=(50, 8)) * (np.arange(8) < 4)  # four pocket residues fluctuate
    found = interaction_metrics(true, true, means)
    assert found["interaction_r2"] == 1.0 and found["interaction_fluctuation_r2"] == 1.0
    assert found["interaction_pocket_residues"] == 4
    # the training mean already looks good over (frame, residue) pairs, and explains no fluctuation
    assert found["mean_baseline_interaction_r2"] > 0.9
    assert found["mean_baseline_interaction_fluctuation_r2"] == 0.0
    shuffled = interaction_metrics(true[rng.permutation(50)], true, means)
    assert shuffled["interaction_fluctuation_r2"] < 0.0


# ----------------------------------------------------------------------------- checkpoints
def test_training_learns_interactions_and_energies_cli_writes_them(tiny_run, tiny_system, tmp_path, capsys):
    """The tiny run's validation logs interaction metrics beside the mean baseline; `hemeplm energies`
    writes the npz, CSV, heatmap and B-factor PDB for any trajectory of the system."""
    import mdtraj

    from hemeplm.cli import main

    records = [json.loads(line) for line in (tiny_run["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    val = next(r for r in records if "val_interaction_fluctuation_r2" in r)
    assert "val_mean_baseline_interaction_r2" in val and "val_force_r2" in val
    out = tmp_path / "energies"
    main(["energies", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]),
          "--frames", str(tiny_system["trajectory"]), "--out", str(out), "--quiet"])
    with np.load(out / "energies.npz") as z:
        inter, names = z["residue_interaction_kcal_mol"], list(z["residues"])
        assert z["energy_kcal_mol"].shape == (40,) and z["forces_kcal_mol_A"].shape[0] == 40
    assert inter.shape == (40, 12) and names[:2] == ["LEU84", "LYS85"] and np.isfinite(inter).all()
    rows = (out / "residue_interaction.csv").read_text().splitlines()
    assert rows[0] == "residue,mean_kcal_mol,std_kcal_mol" and rows[1].startswith("LEU84,")
    pdb = mdtraj.load(str(out / "residue_interaction.pdb"))
    assert pdb.n_atoms == 100 and (out / "residue_interaction.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["energies", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]),
              "--frames", str(tiny_system["trajectory"]), "--out", str(out), "--quiet"])
    assert "pass --force" in capsys.readouterr().err
    # held-out frames scored against their labels, beside the training-mean baseline
    main(["energies", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]),
          "--frames", str(tiny_system["trajectory"]), "--out", str(out), "--start", "34", "--compare", "--force",
          "--quiet"])
    found = json.loads((out / "compare" / "metrics.json").read_text())
    assert found["n_frames"] == 6 and found["mean_baseline_interaction_fluctuation_r2"] == 0.0
    assert np.isfinite([found["interaction_fluctuation_r2"], found["force_r2"], found["energy_mae_kcal_mol"]]).all()
    with np.load(out / "energies.npz") as z:
        assert z["residue_interaction_kcal_mol"].shape == (6, 12)
