"""OpenMM data generation: the T4L run through the CLI, the heme (CHARMM36 HEME) path, and resuming."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import INPCRD, N_ATOMS, PRMTOP, ROOT, heme_pdb

from hemeplm.cli import main
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.simulate import MDRun, SimulateConfig, prepare_pdb

HEME_CFG = dict(solvent="vacuum", timestep_fs=1.0, hydrogen_mass_amu=None, report_every=100, save_every_frames=1)


def test_simulate_t4l_cli(tmp_path, capsys):
    import mdtraj

    from hemeplm.data.load import load_system
    from hemeplm.forcefield.labels import residue_interactions
    from hemeplm.data.parameters import openmm_system, pair_parameters, residue_labels
    from hemeplm.forcefield.simulate import fastest_platform

    out = tmp_path / "md"
    argv = ["simulate", "--prmtop", str(PRMTOP), "--inpcrd", str(INPCRD), "--steps", "500", "--report-every", "100",
            "--equilibrate-steps", "100", "--out", str(out), "--quiet"]
    main(argv)
    captured = capsys.readouterr()
    fastest = fastest_platform()  # what an unset --platform picks
    assert f"5 frames on {fastest}" in captured.out
    assert "minimising from" in captured.err and "minimised to" in captured.err
    # both energies of the same geometry kind (bonds to hydrogen constrained): minimising lowers it
    start = float(re.search(r"minimising from (-?[\d.]+) kcal/mol with \d+ bond constraints applied; "
                            r"(-?[\d.]+) as read", captured.err).group(1))
    end = float(re.search(r"minimised to (-?[\d.]+) kcal/mol \(constraints applied\)", captured.err).group(1))
    assert end < start, captured.err
    traj = mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 5 and traj.n_atoms == N_ATOMS
    md_top = traj.topology  # residues numbered as in topology.pdb (MET1, ...)
    residue, names = residue_labels(md_top)
    with np.load(out / "energies_forces.npz") as z:
        np.testing.assert_allclose(z["time_ps"], [0.4, 0.8, 1.2, 1.6, 2.0], atol=1e-9)  # 100 steps of 4 fs
        assert z["energy_kcal_mol"].shape == (5,) and np.isfinite(z["energy_kcal_mol"]).all()
        assert z["forces_kcal_mol_A"].shape == (5, N_ATOMS, 3) and np.isfinite(z["forces_kcal_mol_A"]).all()
        assert list(z["residues"]) == names and len(names) == 162
        inter = z["residue_interaction_kcal_mol"]
        ligand = z["ligand_atoms"]
    assert [md_top.atom(int(i)).residue.name for i in ligand] == ["TMP"] * 18
    # vacuum interaction energies of the frames as written (float32 DCD): the pocket residues bind the xylene
    expected = residue_interactions(pair_parameters(openmm_system(PRMTOP)[1]), traj.xyz * 10.0, residue, ligand,
                                    len(names))
    np.testing.assert_allclose(inter, expected, atol=1e-3)
    assert inter.sum(axis=1).max() < -5.0 and (inter == 0).mean() < 0.01
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["steps"] == 500 and settings["inputs"]["prmtop"]["name"] == PRMTOP.name
    assert settings["config"]["platform"] == fastest and not (out / "labels").exists()

    # the run is training data: energies and forces come with the frames, the time from the labels
    system = load_system(PRMTOP, [out / "traj.dcd"])
    assert system.energies[0].shape == (5,) and system.forces[0].shape == (5, system.n_atoms, 3)
    assert system.timestep_ps == pytest.approx(0.4)

    # the same command again finds the run complete; other settings in the same folder are refused
    main(argv)
    assert "5 frames" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main([("600" if a == "500" else a) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(out) in err and "other inputs or settings" in err and "\n" not in err


def test_simulate_cli_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--out", str(tmp_path / "md")])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--prmtop", str(tmp_path / "none.prmtop"), "--inpcrd", str(INPCRD),
              "--out", str(tmp_path / "md")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("hemeplm simulate: error:") and "--prmtop" in err[0]
    assert str(tmp_path / "none.prmtop") in err[1] and "not found" in err[1]


@pytest.fixture(scope="module")
def heme(tmp_path_factory):
    """(pdb path, (topology, system, positions)) of the first heme of 19hc chain A, CHARMM36 in vacuum."""
    path = heme_pdb(tmp_path_factory.mktemp("heme") / "hem_a.pdb", first_of_chain="A")
    return path, prepare_pdb(path, SimulateConfig(**HEME_CFG))


def test_heme_prepared_and_simulated(heme):
    import openmm
    from openmm import app, unit

    _, (topology, system, positions) = heme
    residues = list(topology.residues())
    assert [r.name for r in residues] == ["HEME"]
    atoms = list(residues[0].atoms())
    elements = [a.element.symbol for a in atoms]
    assert len(atoms) == 73 and elements.count("H") == 30 and len(atoms) - 30 == 43 and elements.count("Fe") == 1
    # every added hydrogen sits at a bond length from its heavy atom
    xyz = np.asarray(positions.value_in_unit(unit.angstrom))
    for a, b in topology.bonds():
        if "H" in (a.element.symbol, b.element.symbol):
            assert 0.9 < np.linalg.norm(xyz[a.index] - xyz[b.index]) < 1.2
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    sim = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(positions)
    sim.minimizeEnergy(maxIterations=200)
    sim.step(100)
    energy = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilocalorie_per_mole)
    assert np.isfinite(energy) and abs(energy) < 1e4


def _run(heme, out, **overrides) -> MDRun:
    path, parts = heme
    cfg = SimulateConfig(**{**HEME_CFG, "steps": 400, **overrides})
    return MDRun(*parts, cfg=cfg, out=out, inputs={"pdb": str(path)})


def test_interrupted_run_resumes(heme, tmp_path, monkeypatch):
    import mdtraj

    out = tmp_path / "md"
    run = _run(heme, out)
    real_step, calls = run.sim.step, []

    def killed_after_two_frames(n):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(n)
        real_step(n)

    monkeypatch.setattr(run.sim, "step", killed_after_two_frames)
    with pytest.raises(KeyboardInterrupt):
        run.run(progress=False)
    assert not (out / "energies_forces.npz").exists()  # written when the run completes
    chunks = sorted((out / "labels").glob("*.npz"))
    assert [c.name for c in chunks] == ["00000000.npz", "00000001.npz"]
    saved = np.concatenate([np.load(c)["energy_kcal_mol"] for c in chunks])
    assert mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb")).n_frames == 2
    # a kill between writes leaves more than the checkpoint counts: half a frame and a chunk ahead of it
    with open(out / "traj.dcd", "ab") as fh:
        fh.write(b"\0" * 500)
    (out / "labels" / "00000002.npz").write_bytes(chunks[1].read_bytes())

    resumed = _run(heme, out)
    assert resumed.n_frames == 2
    assert not (out / "labels" / "00000002.npz").exists()
    assert mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb")).n_frames == 2
    resumed.run(progress=False)
    with np.load(out / "energies_forces.npz") as z:
        times, energies = z["time_ps"], z["energy_kcal_mol"]
        assert z["forces_kcal_mol_A"].shape == (4, 73, 3)
        assert z["residue_interaction_kcal_mol"].shape == (4, 0)  # a heme alone: no protein residues
    np.testing.assert_allclose(times, [0.1, 0.2, 0.3, 0.4], atol=1e-9)
    np.testing.assert_array_equal(energies[:2], saved)
    traj = mdtraj.load(str(out / "traj.dcd"), top=str(out / "topology.pdb"))
    assert traj.n_frames == 4
    assert not (out / "labels").exists()

    # complete: a new run with the same settings does not step again
    done = _run(heme, out)
    monkeypatch.setattr(done.sim, "step", lambda n: pytest.fail("a complete run was stepped again"))
    done.run(progress=False)
    assert done.n_frames == 4


def test_platform_choice(heme, tmp_path):
    run = _run(heme, tmp_path / "ref", steps=100, platform="Reference")
    assert run.sim.context.getPlatform().getName() == "Reference"
    with pytest.raises(HemeplmError, match="no Metal platform here; available: Reference"):
        _run(heme, tmp_path / "none", platform="Metal")


def test_explicit_solvent_runs_at_constant_pressure(tmp_path):
    import mdtraj
    from openmm import app, unit

    ff = app.ForceField("charmm36.xml", "charmm36/water.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", boxSize=openmm_vec(1.8))
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                             constraints=app.HBonds)
    cfg = SimulateConfig(solvent="explicit", steps=600, report_every=200, timestep_fs=2.0, hydrogen_mass_amu=None,
                         pressure_bar=1.0, platform="CPU")
    run = MDRun(modeller.topology, system, modeller.positions, cfg=cfg, out=tmp_path / "md", inputs={"test": 1})
    assert any(type(f).__name__ == "MonteCarloBarostat" for f in system.getForces())
    run.run(progress=False)
    traj = mdtraj.load(str(tmp_path / "md" / "traj.dcd"), top=str(tmp_path / "md" / "topology.pdb"))
    assert traj.n_frames == 3 and len(np.unique(traj.unitcell_volumes.round(6))) > 1  # the box breathes


def openmm_vec(nm: float):
    from openmm import Vec3, unit

    return Vec3(nm, nm, nm) * unit.nanometer


def test_other_settings_refused(heme, tmp_path):
    out = tmp_path / "md"
    _run(heme, out, steps=100).run(progress=False)
    with pytest.raises(HemeplmError, match="other inputs or settings") as info:
        _run(heme, out, steps=200)
    assert str(out) in str(info.value)


def test_implicit_solvent_for_a_pdb_is_amber14_obc2_without_heme(heme):
    """A protein PDB (villin headpiece, 1VII) in implicit solvent gets Amber14 + OBC2 and runs; a heme PDB is
    refused, naming the file, as Amber14 has no heme."""
    import openmm
    from openmm import unit

    topology, system, positions = prepare_pdb(ROOT / "data" / "villin" / "1vii.pdb", SimulateConfig(solvent="implicit"))
    assert topology.getNumAtoms() == system.getNumParticles() == 596
    assert "CustomGBForce" in {f.__class__.__name__ for f in system.getForces()}
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    integrator.step(10)
    assert np.isfinite(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    path, _ = heme
    with pytest.raises(HemeplmError, match="no heme parameters") as info:
        prepare_pdb(path, SimulateConfig(solvent="implicit"))
    assert str(path) in str(info.value)
