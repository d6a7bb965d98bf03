"""Evaluation of generated vs reference MD, energies/forces, the table and wandb logging.

The data are made here: 40 frames of the T4L L99A–xylene complex with a slow
collective mode and residue-dependent noise (the reference), and the same
frames with 1 Å Gaussian noise added (a known-worse ensemble).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_plots import PDB, assert_png

from hemeplm import evaluate as ev
from hemeplm.cli import main
from hemeplm.errors import HemeplmError

N_FRAMES = 40
JSD_KEYS = ("torsion_jsd", "tica_jsd", "contact_jsd")


def _save(topology, xyz_a: np.ndarray, path: Path) -> Path:
    import mdtraj

    time = np.arange(len(xyz_a), dtype=float)
    mdtraj.Trajectory(xyz_a.astype(np.float32) / 10.0, topology, time=time).save(str(path))
    return path


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    """Reference, noisy and wrong-atom-count trajectories (XTC) of complex.pdb."""
    import mdtraj

    root = tmp_path_factory.mktemp("md")
    t = mdtraj.load(str(PDB))
    rng = np.random.default_rng(0)
    x0 = t.xyz[0].astype(np.float64) * 10.0
    res = np.array([a.residue.index for a in t.topology.atoms], dtype=float)
    amplitude = 0.03 + 0.09 * (0.5 + 0.5 * np.sin(res / 9.0))            # Å, residue dependent
    field = np.sin(res / 15.0)[:, None] * rng.normal(size=3) * 0.3          # Å, one slow collective mode
    slow = np.zeros(N_FRAMES)
    for i in range(1, N_FRAMES):
        slow[i] = 0.9 * slow[i - 1] + rng.normal()
    ref = x0 + slow[:, None, None] * field + rng.normal(size=(N_FRAMES, t.n_atoms, 3)) * amplitude[:, None]
    noisy = ref + rng.normal(size=ref.shape)
    heavy = t.topology.select("not element H")
    t.atom_slice(heavy).save_pdb(str(root / "heavy_only.pdb"))
    return {
        "top": PDB, "root": root,
        "ref": _save(t.topology, ref, root / "ref.xtc"),
        "noisy": _save(t.topology, noisy, root / "noisy.xtc"),
        "heavy": _save(t.topology.subset(heavy), ref[:, heavy], root / "heavy_only.xtc"),
    }


@pytest.fixture(scope="module")
def identity(md):
    """The reference evaluated against itself (task tps, through the Python API)."""
    return ev.evaluate_trajectories(md["top"], [md["ref"]], [md["ref"]], md["root"] / "identity", lag_ps=2.0,
                                    task="tps")


@pytest.fixture(scope="module")
def noisy(md):
    """The noisy ensemble evaluated through the command line."""
    out = md["root"] / "noisy"
    main(["evaluate", "--topology", str(md["top"]), "--reference", str(md["ref"]), "--generated", str(md["noisy"]),
          "--lag-ps", "2", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())


def test_identity_is_perfect(identity):
    model = identity["model"]
    for key in JSD_KEYS + tuple(f"torsion_jsd_{t}" for t in ev.TORSION_TYPES):
        assert model[key] is not None and abs(model[key]) < 1e-6, key
    assert model["rmsf_pearson"] == pytest.approx(1.0, abs=1e-6)
    assert model["contact_pearson"] == pytest.approx(1.0, abs=1e-6)
    assert model["ligand_rmsd_mean_A"] < 1e-4 and model["ligand_rmsd_median_A"] < 1e-4
    ref = identity["info"]["reference"]
    assert model["tic1_decorrelation_ps"] == pytest.approx(ref["tic1_decorrelation_ps"])
    for key in ("bond_ok_fraction", "clashes_per_frame", "ligand_valid_fraction"):
        assert model[key] == pytest.approx(ref[key]), key
    assert model["ligand_valid_fraction"] > 0.5 and model["bond_ok_fraction"] > 0.3


def test_noise_is_worse(identity, noisy):
    good, bad = identity["model"], noisy["model"]
    for key in JSD_KEYS:
        assert bad[key] > good[key] + 0.01, key
    assert bad["rmsf_pearson"] < good["rmsf_pearson"] - 0.1
    assert bad["ligand_rmsd_mean_A"] > good["ligand_rmsd_mean_A"] + 0.5
    assert bad["bond_ok_fraction"] < good["bond_ok_fraction"]
    assert bad["clashes_per_frame"] > good["clashes_per_frame"]
    assert bad["ligand_valid_fraction"] < good["ligand_valid_fraction"]


def test_baselines_side_by_side(identity, noisy, md):
    for metrics in (identity, noisy):
        assert set(metrics) == {"model", "static", "random_walk", "info"}
        assert set(metrics["model"]) == set(metrics["static"]) == set(metrics["random_walk"])
    static = identity["static"]
    assert static["rmsf_pearson"] is None          # frame 0 repeated: no fluctuation at all
    assert static["torsion_jsd"] > 0.1 and static["clashes_per_frame"] >= 0
    assert static["tps_success_fraction"] == 0.0 and static["tps_path_frames_mean"] is None
    assert identity["model"]["tps_success_fraction"] == 1.0  # the reference's own path reaches its own end state
    assert noisy["model"]["tps_success_fraction"] is None  # not a tps run
    info = identity["info"]
    assert info["tica_lag_frames"] == 2 and info["ligand_rmsd_pairing"] == "frame i against reference frame i"
    for out, metrics in ((md["root"] / "identity", identity), (md["root"] / "noisy", noisy)):
        assert metrics["info"]["figures"] == ["tica_fes.png", "rmsf.png", "contacts.png"]
        for name in metrics["info"]["figures"]:
            assert_png(out / name)


def test_print_table(identity, noisy):
    table = ev.print_table(noisy)
    header = table.splitlines()[0].split()
    assert header == ["metric", "better", "model", "static", "random_walk", "reference"]
    assert "torsion_jsd" in table and "ligand_valid_fraction" in table
    assert "tps_success_fraction" not in table
    assert "tps_success_fraction" in ev.print_table(identity)


def test_refuses_to_overwrite(md, noisy, capsys):
    out = md["root"] / "noisy"
    with pytest.raises(HemeplmError, match="metrics.json.*--force"):
        ev.evaluate_trajectories(md["top"], [md["ref"]], [md["noisy"]], out)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--topology", str(md["top"]), "--reference", str(md["ref"]), "--generated",
              str(md["noisy"]), "--out", str(out)])
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err


def test_bad_input_names_the_file(md, tmp_path):
    missing = tmp_path / "missing.xtc"
    with pytest.raises(HemeplmError, match="missing.xtc"):
        ev.evaluate_trajectories(md["top"], [md["ref"]], [missing], tmp_path / "a")
    with pytest.raises(HemeplmError, match="heavy_only.xtc"):
        ev.evaluate_trajectories(md["top"], [md["ref"]], [md["heavy"]], tmp_path / "b")
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_generated_topology_without_hydrogens(md, tmp_path):
    """Generated files usually hold heavy atoms only, with their own topology."""
    metrics = ev.evaluate_trajectories(md["top"], [md["ref"]], [md["heavy"]], tmp_path,
                                       generated_topology=md["root"] / "heavy_only.pdb")
    assert metrics["model"]["torsion_jsd"] < 1e-6 and metrics["model"]["ligand_rmsd_mean_A"] < 1e-4


def test_jensen_shannon_and_histograms():
    p = np.array([[1.0, 0, 0], [1, 1, 0]])
    q = np.array([[0.0, 0, 2], [1, 1, 0]])
    np.testing.assert_allclose(ev.jensen_shannon(p, q), [1.0, 0.0], atol=1e-12)
    assert ev.jensen_shannon([1, 2, 3], [3, 2, 1]) == pytest.approx(ev.jensen_shannon([3, 2, 1], [1, 2, 3]))
    assert math.isnan(ev.jensen_shannon([0, 0], [1, 0]))
    values = np.random.default_rng(0).uniform(-4, 4, size=(100, 3, 2))   # beyond the edges: counted in end bins
    edges = [np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)]
    counts = ev.binned(values, edges)
    assert counts.shape == (3, 8) and (counts.sum(1) == 100).all()
    clipped = np.clip(values[:, 0], [-1, -2], [0.999, 1.999])
    np.testing.assert_array_equal(counts[0], np.histogram2d(clipped[:, 0], clipped[:, 1], bins=edges)[0].ravel())


def test_decorrelation_time_of_ar1():
    rng = np.random.default_rng(0)
    a = 0.9
    series = []
    for _ in range(4):
        x = np.zeros(5000)
        for i in range(1, len(x)):
            x[i] = a * x[i - 1] + rng.normal()
        series.append(x)
    expected = -1.0 / math.log(a) * 2.0   # 1/e time of a^t, 2 ps per frame
    assert ev.decorrelation_time(series, 2.0) == pytest.approx(expected, rel=0.1)
    assert math.isnan(ev.decorrelation_time([np.ones(50)], 1.0))


def test_transition_paths():
    labels = [np.array([0, 0, 1, 0, 2, 2]), np.array([1, 1, 1]), np.array([0, 1, 1])]
    out = ev.transition_paths(labels, [2, 0, 2])
    assert out["tps_success_fraction"] == pytest.approx(1 / 3)
    assert out["tps_path_frames_mean"] == 1.0        # last in state 0 at frame 3, arrives in 2 at frame 4


# ----------------------------------------------------------------------------- energies and forces

class HarmonicSystem:
    """E(x) = k/2 Σ |x_i - x0_i|², forces -k (x - x0), residue energies summed per residue (kcal/mol, Å)."""

    def __init__(self, topology, x0: np.ndarray, k: float = 2.0):
        self.x0, self.k = x0, k
        self.atom_res = np.array([a.residue.index for a in topology.atoms])
        self.n_res = topology.n_residues

    def __call__(self, coords: np.ndarray) -> dict:
        atom_e = 0.5 * self.k * ((coords - self.x0) ** 2).sum(-1)
        res_e = np.stack([np.bincount(self.atom_res, e, self.n_res) for e in atom_e])
        return {"energy": atom_e.sum(-1), "residue_energy": res_e, "forces": -self.k * (coords - self.x0)}


def _noisy_predictor(true: HarmonicSystem, sigma: float, seed: int):
    rng = np.random.default_rng(seed)

    def predict(coords):
        out = true(coords)
        return {k: v + rng.normal(scale=sigma * v.std(), size=v.shape) for k, v in out.items()}
    return predict


@pytest.fixture(scope="module")
def harmonic():
    from hemeplm.data.load import load_system

    system = load_system(PDB, [])
    x0 = system.segments[0][0].astype(np.float64)
    coords = x0 + np.random.default_rng(3).normal(scale=0.3, size=(24, *x0.shape))
    true = HarmonicSystem(system.topology, x0)
    return system.topology, coords, true, true(coords)


def test_energy_metrics_get_worse_with_noise(harmonic):
    _, coords, true, ref = harmonic
    results = []
    for sigma in (0.0, 0.05, 0.5):
        pred = _noisy_predictor(true, sigma, seed=1)(coords)
        results.append(ev.energy_force_metrics(pred["energy"], ref["energy"], pred["forces"], ref["forces"],
                                               pred["residue_energy"], ref["residue_energy"]))
    perfect, small, large = results
    for q, unit in (("energy", "kcal_mol"), ("residue_energy", "kcal_mol"), ("force", "kcal_mol_A")):
        assert perfect[f"{q}_mse_{unit}_sq"] == 0.0 and perfect[f"{q}_r2"] == 1.0
        assert 0 < small[f"{q}_mse_{unit}_sq"] < large[f"{q}_mse_{unit}_sq"]
        assert small[f"{q}_mae_{unit}"] < large[f"{q}_mae_{unit}"]
        assert small[f"{q}_rmse_{unit}"] == pytest.approx(math.sqrt(small[f"{q}_mse_{unit}_sq"]))
        assert large[f"{q}_r2"] < small[f"{q}_r2"] < 1.0
        assert large[f"{q}_pearson"] < small[f"{q}_pearson"] < 1.0
    no_res = ev.energy_force_metrics(ref["energy"], ref["energy"], ref["forces"], ref["forces"])
    assert not any(k.startswith("residue_energy") for k in no_res)


def test_evaluate_energies_writes_figures_and_pdbs(harmonic, tmp_path):
    import mdtraj

    topology, coords, true, ref = harmonic
    metrics, files = ev.evaluate_energies(_noisy_predictor(true, 0.1, seed=2), coords, ref["energy"], ref["forces"],
                                          topology, tmp_path, true_res_energy=ref["residue_energy"], batch_frames=10)
    assert 0.0 < metrics["energy_r2"] < 1.0 and "residue_energy_pearson" in metrics
    names = sorted(f.name for f in files)
    assert names == ["energy_histogram.png", "energy_parity.png", "force_error.pdb", "force_parity.png",
                     "residue_energy_error.pdb", "residue_energy_error.png"]
    for f in files:
        if f.suffix == ".png":
            assert_png(f)
        else:
            assert mdtraj.load(str(f)).n_atoms == topology.n_atoms


def test_log_to_wandb_offline(tmp_path, monkeypatch, identity, md):
    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    run = wandb.init(mode="offline", dir=tmp_path, project="hemeplm-test")
    logged = ev.log_to_wandb(run, identity, [md["root"] / "identity" / "rmsf.png"], step=0)
    run_dir = Path(run.dir).parent
    run.finish()
    assert logged["model/torsion_jsd"] == identity["model"]["torsion_jsd"]
    assert "info/reference/bond_ok_fraction" in logged and "model/tps_success_fraction" in logged
    assert not any(k.startswith("info/figures") or k == "static/rmsf_pearson" for k in logged)  # strings, None
    record = next(run_dir.glob("*.wandb")).read_bytes()    # offline runs keep their history in this file
    for key in ("model/torsion_jsd", "random_walk/clashes_per_frame", "figures/rmsf"):
        assert key.encode() in record, key
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 1000
