"""Evaluation of generated vs reference MD, energies/forces, the table and wandb logging.

The data are made here: 40 frames of the T4L L99A–xylene complex with a slow
collective mode and residue-dependent noise (the reference), and the same
frames with 1 Å Gaussian noise added (a known-worse ensemble). 40 frames are
too few for TICA on 256 features, so TICA is skipped there; the TICA, TPS and
prior-column tests use 400 such frames of a 12-residue pocket with the xylene
(100 heavy atoms, 86 TICA features).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SELECTION
from test_plots import PDB, assert_png

from hemeplm.evaluate import kinetics
from hemeplm.evaluate.checks import (CLASH_CLASSES, backbone_angles, backbone_checks, bond_lengths, bond_ok_fractions,
                                     clashes_by_kind, clashes_per_frame, physical_filter, ramachandran_allowed,
                                     validity)
from hemeplm.evaluate.energy import energy_force_metrics, evaluate_energies, interaction_metrics
from hemeplm.evaluate.geometry import BOND_CLASSES, RAMA_CLASSES, Geometry, TORSION_TYPES, build_geometry
from hemeplm.evaluate.report import log_to_wandb, print_table
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.evaluate.stats import binned, decorrelation_time, jensen_shannon
from hemeplm.evaluate.trajectory import TICA_PAIRS_PER_FEATURE, fit_tica, transition_paths
from hemeplm.cli import main
from hemeplm.errors import HemeplmError

N_FRAMES = 40
POCKET_FRAMES = 400
JSD_KEYS = ("torsion_jsd", "contact_jsd")
#: metrics that need TICA: null in every column when the reference is too short for it
TICA_KEYS = ("tica_jsd", "tic1_decorrelation_ps", "tps_success_fraction", "tps_path_frames_mean")
#: the split validity metrics beside their totals
SPLIT_KEYS = tuple(f"bond_ok_fraction_{c}" for c in BOND_CLASSES) + tuple(
    f"clashes_per_frame_{c}" for c in CLASH_CLASSES)


def _save(topology, xyz_a: np.ndarray, path: Path) -> Path:
    import mdtraj

    time = np.arange(len(xyz_a), dtype=float)
    mdtraj.Trajectory(xyz_a.astype(np.float32) / 10.0, topology, time=time).save(str(path))
    return path


def _fake_md(t, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(n_frames, A, 3) Å: frame 0 of trajectory ``t``, a slow collective mode and residue-dependent noise."""
    x0 = t.xyz[0].astype(np.float64) * 10.0
    res = np.array([a.residue.index for a in t.topology.atoms], dtype=float)
    amplitude = 0.03 + 0.09 * (0.5 + 0.5 * np.sin(res / 9.0))            # Å, residue dependent
    field = np.sin(res / 15.0)[:, None] * rng.normal(size=3) * 0.3          # Å, one slow collective mode
    slow = np.zeros(n_frames)
    for i in range(1, n_frames):
        slow[i] = 0.9 * slow[i - 1] + rng.normal()
    return x0 + slow[:, None, None] * field + rng.normal(size=(n_frames, t.n_atoms, 3)) * amplitude[:, None]


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    """Reference, noisy and wrong-atom-count trajectories (XTC) of complex.pdb."""
    import mdtraj

    root = tmp_path_factory.mktemp("md")
    t = mdtraj.load(str(PDB))
    rng = np.random.default_rng(0)
    ref = _fake_md(t, N_FRAMES, rng)
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
    """The reference evaluated against itself (task tps, through the Python API; no frame given)."""
    return evaluate_trajectories(md["top"], [md["ref"]], [md["ref"]], md["root"] / "identity", lag_ps=2.0,
                                    task="tps", posebusters_frames=3, conditioned_frames=[])


@pytest.fixture(scope="module")
def noisy(md):
    """The noisy ensemble evaluated through the command line."""
    out = md["root"] / "noisy"
    main(["evaluate", "--topology", str(md["top"]), "--reference", str(md["ref"]), "--generated", str(md["noisy"]),
          "--lag-ps", "2", "--posebusters-frames", "3", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def pocket(tmp_path_factory):
    """Heavy-atom topology (PDB) of twelve pocket residues and the xylene, a 400-frame reference, and that reference
    with 1 Å Gaussian noise as the prior; the reference evaluated against itself with the prior (task tps, CLI,
    no frame given)."""
    import mdtraj

    root = tmp_path_factory.mktemp("pocket")
    full = mdtraj.load(str(PDB))
    t = full.atom_slice(full.topology.select(f"({TINY_SELECTION}) and not element H"))
    for atom in t.topology.atoms:
        atom.serial = None       # numbered afresh, so that the CONECT records (xylene bonds) match
    t.save_pdb(str(root / "pocket.pdb"))
    rng = np.random.default_rng(1)
    ref = _fake_md(t, POCKET_FRAMES, rng)
    files = {"top": root / "pocket.pdb", "ref": _save(t.topology, ref, root / "ref.xtc"),
             "prior": _save(t.topology, ref + rng.normal(size=ref.shape), root / "prior.xtc"), "out": root / "eval"}
    main(["evaluate", "--topology", str(files["top"]), "--reference", str(files["ref"]), "--generated",
          str(files["ref"]), "--prior", str(files["prior"]), "--task", "tps", "--conditioned-frames",
          "--out", str(files["out"])])
    return {**files, "metrics": json.loads((files["out"] / "metrics.json").read_text())}


def test_identity_is_perfect(identity, pocket):
    model = identity["model"]
    for key in JSD_KEYS + tuple(f"torsion_jsd_{t}" for t in TORSION_TYPES):
        assert model[key] is not None and abs(model[key]) < 1e-6, key
    assert model["rmsf_pearson"] == pytest.approx(1.0, abs=1e-6)
    assert model["contact_pearson"] == pytest.approx(1.0, abs=1e-6)
    assert model["ligand_rmsd_mean_A"] < 1e-4 and model["ligand_rmsd_median_A"] < 1e-4
    ref = identity["info"]["reference"]
    for key in ("bond_ok_fraction", "clashes_per_frame", "ligand_valid_fraction") + SPLIT_KEYS:
        assert model[key] is not None and model[key] == pytest.approx(ref[key]), key
    assert model["ligand_valid_fraction"] > 0.5 and model["bond_ok_fraction"] > 0.3
    assert model["clashes_per_frame"] == pytest.approx(sum(model[f"clashes_per_frame_{c}"] for c in CLASH_CLASSES))
    pocket_model = pocket["metrics"]["model"]
    assert pocket_model["tica_jsd"] < 1e-6
    assert pocket_model["tic1_decorrelation_ps"] == pytest.approx(pocket["metrics"]["info"]["reference"]
                                                                  ["tic1_decorrelation_ps"])


def test_noise_is_worse(identity, noisy, pocket):
    good, bad = identity["model"], noisy["model"]
    for key in JSD_KEYS:
        assert bad[key] > good[key] + 0.01, key
    assert bad["rmsf_pearson"] < good["rmsf_pearson"] - 0.1
    assert bad["ligand_rmsd_mean_A"] > good["ligand_rmsd_mean_A"] + 0.5
    for key in ("bond_ok_fraction",) + tuple(f"bond_ok_fraction_{c}" for c in BOND_CLASSES):
        assert bad[key] < good[key], key
    assert bad["clashes_per_frame"] > good["clashes_per_frame"]
    assert bad["clashes_per_frame_protein_protein"] > good["clashes_per_frame_protein_protein"]
    assert bad["ligand_valid_fraction"] < good["ligand_valid_fraction"]
    assert good["posebusters_pass_fraction"] == 1.0 and bad["posebusters_pass_fraction"] == 0.0
    assert good["posebusters_bond_lengths"] == 1.0 and bad["posebusters_bond_lengths"] == 0.0
    assert pocket["metrics"]["prior"]["tica_jsd"] > pocket["metrics"]["model"]["tica_jsd"] + 0.01


def test_baselines_side_by_side(identity, noisy, md):
    for metrics in (identity, noisy):
        assert set(metrics) == {"model", "static", "random_walk", "info"}
        assert set(metrics["model"]) == set(metrics["static"]) == set(metrics["random_walk"])
    static = identity["static"]
    assert static["rmsf_pearson"] is None          # frame 0 repeated: no fluctuation at all
    assert static["torsion_jsd"] > 0.1 and static["clashes_per_frame"] >= 0
    info = identity["info"]
    assert info["tica_lag_frames"] == 2 and info["ligand_rmsd_pairing"] == "frame i against reference frame i"
    for out, metrics in ((md["root"] / "identity", identity), (md["root"] / "noisy", noisy)):
        assert metrics["info"]["figures"] == ["rmsf.png", "contacts.png"]     # no TICA, no tica_fes.png
        for name in metrics["info"]["figures"]:
            assert_png(out / name)


def test_tica_skipped_on_a_short_reference(identity, noisy):
    """40 frames at lag 2 give 38 frame pairs for 256 features: TICA and everything built on it is null, with why."""
    reason = identity["info"]["tica"]
    assert reason.startswith("skipped: 38 time-lagged frame pairs from 40 reference frames at a lag of 2 frames for "
                             "256 TICA features; need at least 1024")
    assert identity["info"]["tps"] == reason and noisy["info"]["tica"] == reason
    assert "tps" not in noisy["info"]                  # not a tps run
    for metrics in (identity, noisy):
        assert metrics["info"]["reference"]["tic1_decorrelation_ps"] is None
        for method in ("model", "static", "random_walk"):
            for key in TICA_KEYS:
                assert metrics[method][key] is None, (method, key)
    assert "tica_jsd" not in print_table(identity) and "tps_success_fraction" not in print_table(identity)
    assert identity["info"]["kinetics"] == f"skipped: needs TICA, which was {reason}"
    for method in ("model", "static", "random_walk"):
        assert all(identity[method][key] is None for key in kinetics.KEYS), method


def test_tica_threshold():
    """TICA is fitted from exactly TICA_PAIRS_PER_FEATURE frame pairs per feature on, pooled over trajectories."""
    rng = np.random.default_rng(0)
    n_features, lag = 6, 3
    need = TICA_PAIRS_PER_FEATURE * n_features
    short = [rng.normal(size=(need // 2 + lag, n_features)), rng.normal(size=(need // 2 + lag - 1, n_features))]
    tica, chosen, note = fit_tica(short, lag)
    assert tica is None and len(chosen) == n_features
    assert note.startswith(f"skipped: {need - 1} time-lagged frame pairs") and f"need at least {need}" in note
    enough = [short[0], rng.normal(size=(need // 2 + lag, n_features)), rng.normal(size=(lag, n_features))]
    tica, _, note = fit_tica(enough, lag)
    assert tica is not None and note.startswith(f"fitted on {need} time-lagged frame pairs")
    assert tica.transform(enough[0]).shape == (len(enough[0]), 2)


def test_tica_tps_and_prior_on_a_long_reference(pocket):
    metrics = pocket["metrics"]
    assert set(metrics) == {"model", "static", "random_walk", "prior", "info"}
    assert set(metrics["prior"]) == set(metrics["model"])
    info = metrics["info"]
    assert info["tica"].startswith("fitted on 399 time-lagged frame pairs from 400 reference frames at a lag of 1 "
                                   "frame for 86 TICA features")
    assert "tps" not in info and info["prior_files"] == [str(pocket["prior"])] and info["prior_frames"] == [400]
    assert info["figures"] == ["tica_fes.png", "rmsf.png", "contacts.png"]
    for name in info["figures"]:
        assert_png(pocket["out"] / name)
    model, static, prior = metrics["model"], metrics["static"], metrics["prior"]
    assert model["tps_success_fraction"] == 1.0   # the reference's own path reaches its own end state
    assert static["tps_success_fraction"] == 0.0 and static["tps_path_frames_mean"] is None
    assert prior["tica_jsd"] is not None and prior["tic1_decorrelation_ps"] is not None
    assert prior["tps_success_fraction"] is not None
    for key in ("bond_ok_fraction", "clashes_per_frame", "torsion_jsd", "ligand_rmsd_mean_A"):
        assert prior[key] is not None and prior[key] != model[key], key
    assert prior["bond_ok_fraction_ligand"] < model["bond_ok_fraction_ligand"]
    assert info["kinetics"].startswith("10 k-means microstates on TIC1/TIC2, reversible MSM at a lag of 1 ps")
    reference = info["reference"]
    assert model["kinetics_population_jsd"] == pytest.approx(0, abs=1e-9)
    assert model["kinetics_timescales_ps"] == pytest.approx(reference["kinetics_timescales_ps"])
    np.testing.assert_allclose(model["kinetics_mfpt_ps"], reference["kinetics_mfpt_ps"])
    assert prior["kinetics_population_jsd"] > 0 and prior["kinetics_timescale_1_ps"] is not None
    assert static["kinetics_timescale_1_ps"] is None              # frame 0 repeated: no transitions to count
    assert info["posebusters"].startswith("skipped: the topology has neither")  # a heavy-atom PDB without orders


def test_print_table(noisy, pocket):
    table = print_table(noisy)
    header = table.splitlines()[0].split()
    assert header == ["metric", "better", "model", "static", "random_walk", "reference"]
    assert "torsion_jsd" in table and "ligand_valid_fraction" in table and "bond_ok_fraction_peptide" in table
    assert "tps_success_fraction" not in table
    drifted = next(line.split() for line in table.splitlines() if line.startswith("ca_rmsd_end_A"))
    assert drifted[1] == "~ref" and drifted[-1] != "-"   # the reference's own drift over the same span
    table = print_table(pocket["metrics"])
    assert table.splitlines()[0].split() == ["metric", "better", "model", "prior", "static", "random_walk",
                                             "reference"]
    assert "tps_success_fraction" in table and "tica_jsd" in table
    row = next(line.split() for line in table.splitlines() if line.startswith("clashes_per_frame_protein_ligand"))
    assert len(row) == 7                             # a value or "-" in every column


# ----------------------------------------------------------------------------- the split validity metrics

@pytest.fixture(scope="module")
def pocket_geometry(pocket):
    """The pocket's :class:`~hemeplm.evaluate.Geometry` and its (A, 3) Å coordinates."""
    from hemeplm.data.load import load_system

    system = load_system(pocket["top"], [])
    x0 = system.segments[0][0].astype(np.float64)
    return build_geometry(system.topology, system.ligand, x0), x0


def _atom(geom: Geometry, selection: str) -> int:
    (index,) = geom.topology.select(selection)
    return int(index)


def _stretched(x0: np.ndarray, moving: np.ndarray, a: int, b: int, by: float = 0.5) -> np.ndarray:
    """x0 with the atoms ``moving`` translated by ``by`` Å along the bond a -> b (stretching it by ``by``)."""
    x = x0.copy()
    x[moving] += by * (x0[b] - x0[a]) / np.linalg.norm(x0[b] - x0[a])
    return x


def test_bond_ok_fraction_split(pocket_geometry):
    geom, x0 = pocket_geometry
    assert np.bincount(geom.bond_class).tolist() == [82, 11, 8]
    ref_lengths = bond_lengths(x0[None], geom)[0]
    c86, n87 = _atom(geom, "resSeq 86 and name C"), _atom(geom, "resSeq 87 and name N")
    tail = geom.topology.select("protein and resSeq 87 to 103")      # moves rigidly: only C86-N87 stretches
    c7, c8 = _atom(geom, "resname TMP and name C7"), _atom(geom, "resname TMP and name C8")  # C8: methyl on C7
    intact = bond_ok_fractions(x0[None], geom, ref_lengths)
    assert set(intact) == {"bond_ok_fraction", *(f"bond_ok_fraction_{c}" for c in BOND_CLASSES)}
    assert all(v == 1.0 for v in intact.values())
    peptide = bond_ok_fractions(_stretched(x0, tail, c86, n87)[None], geom, ref_lengths)
    assert peptide == {"bond_ok_fraction": 100 / 101, "bond_ok_fraction_intra_residue": 1.0,
                       "bond_ok_fraction_peptide": 10 / 11, "bond_ok_fraction_ligand": 1.0}
    ligand = bond_ok_fractions(_stretched(x0, np.array([c8]), c7, c8)[None], geom, ref_lengths)
    assert ligand == {"bond_ok_fraction": 100 / 101, "bond_ok_fraction_intra_residue": 1.0,
                      "bond_ok_fraction_peptide": 1.0, "bond_ok_fraction_ligand": 7 / 8}


def test_clashes_split(pocket_geometry):
    geom, x0 = pocket_geometry
    c8, ca99 = _atom(geom, "resname TMP and name C8"), _atom(geom, "resSeq 99 and name CA")
    onto = x0.copy()
    onto[c8] = x0[ca99] + 0.3                          # the methyl carbon 0.5 Å from a Cα
    clashes = clashes_by_kind(np.stack([x0, onto]), geom)
    before = clashes_by_kind(x0[None], geom)
    assert clashes["clashes_per_frame_protein_protein"] == before["clashes_per_frame_protein_protein"]
    assert clashes["clashes_per_frame_ligand_ligand"] == before["clashes_per_frame_ligand_ligand"] == 0
    assert clashes["clashes_per_frame_protein_ligand"] >= before["clashes_per_frame_protein_ligand"] + 0.5
    assert clashes["clashes_per_frame"] == pytest.approx(sum(clashes[f"clashes_per_frame_{c}"]
                                                             for c in CLASH_CLASSES))
    assert clashes_per_frame(np.stack([x0, onto]), geom) == clashes["clashes_per_frame"]


def test_refuses_to_overwrite(md, noisy, capsys):
    out = md["root"] / "noisy"
    with pytest.raises(HemeplmError, match="metrics.json.*--force"):
        evaluate_trajectories(md["top"], [md["ref"]], [md["noisy"]], out)
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--topology", str(md["top"]), "--reference", str(md["ref"]), "--generated",
              str(md["noisy"]), "--out", str(out)])
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err


def test_bad_input_names_the_file(md, tmp_path):
    missing = tmp_path / "missing.xtc"
    with pytest.raises(HemeplmError, match="missing.xtc"):
        evaluate_trajectories(md["top"], [md["ref"]], [missing], tmp_path / "a")
    with pytest.raises(HemeplmError, match="heavy_only.xtc"):
        evaluate_trajectories(md["top"], [md["ref"]], [md["heavy"]], tmp_path / "b",
                                 generated_topology=md["top"])
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_generated_topology_without_hydrogens(md, tmp_path):
    """Generated files usually hold heavy atoms only, with their own topology."""
    metrics = evaluate_trajectories(md["top"], [md["ref"]], [md["heavy"]], tmp_path, posebusters_frames=0,
                                    conditioned_frames=[])
    assert metrics["info"]["generated_topology"] == str(md["root"] / "heavy_only.pdb")  # found beside the file
    assert metrics["model"]["torsion_jsd"] < 1e-6 and metrics["model"]["ligand_rmsd_mean_A"] < 1e-4


def test_jensen_shannon_and_histograms():
    p = np.array([[1.0, 0, 0], [1, 1, 0]])
    q = np.array([[0.0, 0, 2], [1, 1, 0]])
    np.testing.assert_allclose(jensen_shannon(p, q), [1.0, 0.0], atol=1e-12)
    assert jensen_shannon([1, 2, 3], [3, 2, 1]) == pytest.approx(jensen_shannon([3, 2, 1], [1, 2, 3]))
    assert math.isnan(jensen_shannon([0, 0], [1, 0]))
    values = np.random.default_rng(0).uniform(-4, 4, size=(100, 3, 2))   # beyond the edges: counted in end bins
    edges = [np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)]
    counts = binned(values, edges)
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
    assert decorrelation_time(series, 2.0) == pytest.approx(expected, rel=0.1)
    assert math.isnan(decorrelation_time([np.ones(50)], 1.0))


def test_transition_paths():
    labels = [np.array([0, 0, 1, 0, 2, 2]), np.array([1, 1, 1]), np.array([0, 1, 1])]
    out = transition_paths(labels, [2, 0, 2])
    assert out["tps_success_fraction"] == pytest.approx(1 / 3)
    assert out["tps_path_frames_mean"] == 1.0        # last in state 0 at frame 3, arrives in 2 at frame 4


# ----------------------------------------------------------------------------- energies and forces

class HarmonicSystem:
    """E(x) = k/2 Σ |x_i - x0_i|², forces -k (x - x0); "interaction" energies: the energy summed per protein
    residue (kcal/mol, Å)."""

    def __init__(self, topology, x0: np.ndarray, k: float = 2.0):
        self.x0, self.k = x0, k
        protein = [r for r in topology.residues if r.is_protein]
        self.atom_res = np.full(topology.n_atoms, len(protein))
        for i, r in enumerate(protein):
            self.atom_res[[a.index for a in r.atoms]] = i
        self.n_res = len(protein)

    def __call__(self, coords: np.ndarray) -> dict:
        atom_e = 0.5 * self.k * ((coords - self.x0) ** 2).sum(-1)
        res_e = np.stack([np.bincount(self.atom_res, e, self.n_res + 1)[:-1] for e in atom_e])
        return {"energy": atom_e.sum(-1), "interaction": res_e, "forces": -self.k * (coords - self.x0)}


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
        found = energy_force_metrics(pred["energy"], ref["energy"], pred["forces"], ref["forces"])
        found.update(interaction_metrics(pred["interaction"], ref["interaction"], ref["interaction"].mean(0)))
        results.append(found)
    perfect, small, large = results
    for q, unit in (("energy", "kcal_mol"), ("interaction", "kcal_mol"), ("force", "kcal_mol_A")):
        assert perfect[f"{q}_mse_{unit}_sq"] == 0.0 and perfect[f"{q}_r2"] == 1.0
        assert 0 < small[f"{q}_mse_{unit}_sq"] < large[f"{q}_mse_{unit}_sq"]
        assert small[f"{q}_mae_{unit}"] < large[f"{q}_mae_{unit}"]
        assert small[f"{q}_rmse_{unit}"] == pytest.approx(math.sqrt(small[f"{q}_mse_{unit}_sq"]))
        assert large[f"{q}_r2"] < small[f"{q}_r2"] < 1.0
        assert large[f"{q}_pearson"] < small[f"{q}_pearson"] < 1.0
    assert large["interaction_fluctuation_r2"] < small["interaction_fluctuation_r2"] < 1.0


def test_evaluate_energies_writes_figures_and_pdbs(harmonic, tmp_path):
    import mdtraj

    topology, coords, true, ref = harmonic
    metrics, files = evaluate_energies(_noisy_predictor(true, 0.1, seed=2), coords, ref["energy"], ref["forces"],
                                          topology, tmp_path, true_interaction=ref["interaction"], batch_frames=10)
    assert 0.0 < metrics["energy_r2"] < 1.0 and "interaction_fluctuation_r2" in metrics
    assert metrics["mean_baseline_interaction_fluctuation_r2"] == 0.0
    names = sorted(f.name for f in files)
    assert names == ["energy_histogram.png", "energy_parity.png", "force_error.pdb", "force_parity.png",
                     "interaction_error.pdb", "interaction_error.png", "interaction_parity.png"]
    for f in files:
        if f.suffix == ".png":
            assert_png(f)
        else:
            assert mdtraj.load(str(f)).n_atoms == topology.n_atoms


def _wandb_record(run_dir: Path, keys: list[bytes], timeout_s: float = 60.0) -> bytes:
    """The offline run's history file, once it holds every key or the timeout passes.

    wandb's writer is a separate process and may still be flushing after ``run.finish()`` returns on a busy machine.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(run_dir.glob("*.wandb"))
        record = files[0].read_bytes() if files else b""
        if all(key in record for key in keys) or time.monotonic() > deadline:
            return record
        time.sleep(0.5)


def test_log_to_wandb_offline(tmp_path, monkeypatch, pocket):
    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    run = wandb.init(mode="offline", dir=tmp_path, project="hemeplm-test")
    metrics = pocket["metrics"]
    logged = log_to_wandb(run, metrics, [pocket["out"] / "rmsf.png"], step=0)
    run_dir = Path(run.dir).parent
    run.finish()
    assert logged["model/torsion_jsd"] == metrics["model"]["torsion_jsd"]
    assert "info/reference/bond_ok_fraction" in logged and "model/tps_success_fraction" in logged
    assert not any(k.startswith("info/figures") or k == "static/rmsf_pearson" for k in logged)  # strings, None
    keys = [key.encode() for key in ("model/torsion_jsd", "random_walk/clashes_per_frame", "figures/rmsf")]
    record = _wandb_record(run_dir, keys)
    for key in keys:
        assert key in record, key
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 1000


def _weights_file(path: Path, w: np.ndarray) -> Path:
    np.savez(path, weights=w)
    return path


def test_weights_uniform_reproduce_the_unweighted_metrics(md, noisy, tmp_path):
    out = tmp_path / "uniform"
    w = _weights_file(tmp_path / "uniform.npz", np.full(N_FRAMES, 1.0 / N_FRAMES))
    main(["evaluate", "--topology", str(md["top"]), "--reference", str(md["ref"]), "--generated", str(md["noisy"]),
          "--lag-ps", "2", "--posebusters-frames", "3", "--weights", str(w), "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for column in ("model", "static", "random_walk"):
        assert metrics[column] == noisy[column], column          # exactly today's numbers
    assert noisy["info"]["weights"] is None
    info = metrics["info"]["weights"]
    assert info["file"] == str(w) and info["n_frames"] == N_FRAMES
    assert info["effective_sample_size"] == pytest.approx(N_FRAMES)


def test_weighted_functions(md):
    """The weighted paths themselves: uniform weights agree with no weights, one-hot weights with that frame alone."""
    from hemeplm.data.load import load_system
    from hemeplm.evaluate.stats import weighted_median
    from hemeplm.evaluate.trajectory import contact_frequency, rmsf

    system = load_system(md["top"], [md["noisy"]])
    x = system.segments[0][:20].astype(np.float64)
    geom = build_geometry(system.topology, system.ligand, x[0])
    uniform, one = np.full(len(x), 1.0 / len(x)), np.zeros(len(x))
    one[7] = 1.0
    np.testing.assert_allclose(rmsf(x, uniform), rmsf(x), rtol=1e-12)
    np.testing.assert_allclose(contact_frequency(x, geom, weights=uniform), contact_frequency(x, geom), rtol=1e-12)
    assert (rmsf(x, one) == 0).all() and rmsf(x).max() > 0
    np.testing.assert_array_equal(contact_frequency(x, geom, weights=one), contact_frequency(x[7:8], geom))
    values = np.random.default_rng(0).uniform(-4, 4, size=(len(x), 3, 2))
    edges = [np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)]
    np.testing.assert_allclose(binned(values, edges, uniform) * len(x), binned(values, edges), rtol=1e-12)
    np.testing.assert_array_equal(binned(values, edges, one), binned(values[7:8], edges))
    assert weighted_median(values[:, 0, 0], one) == values[7, 0, 0]
    assert weighted_median(np.array([3.0, 1.0, 2.0]), np.ones(3)) == 2.0


def test_weights_on_one_frame_give_that_frame_alone(md, tmp_path):
    import mdtraj

    j = 7
    one = np.zeros(N_FRAMES)
    one[j] = 1.0
    w = _weights_file(tmp_path / "one.npz", one)
    weighted = evaluate_trajectories(md["top"], [md["ref"]], [md["noisy"]], tmp_path / "one", lag_ps=2.0,
                                        posebusters_frames=0, weights=w, conditioned_frames=[])["model"]
    frame = mdtraj.load(str(md["noisy"]), top=str(md["top"]))[j]
    alone = evaluate_trajectories(md["top"], [md["ref"]], [_save(frame.topology, frame.xyz * 10.0,
                                                                       tmp_path / "frame.xtc")],
                                     tmp_path / "alone", lag_ps=2.0, posebusters_frames=0,
                                     conditioned_frames=[])["model"]
    for key in ("torsion_jsd", "contact_jsd", "contact_pearson") + tuple(f"torsion_jsd_{t}" for t in TORSION_TYPES):
        assert weighted[key] == pytest.approx(alone[key], abs=1e-9), key
    assert weighted["rmsf_pearson"] is None and alone["rmsf_pearson"] is None     # RMSF of one frame: all 0
    assert weighted["ligand_rmsd_median_A"] == weighted["ligand_rmsd_mean_A"] > 0.5  # frame j against reference j
    # validity stays an unweighted per-frame fraction over all 40 frames
    unweighted = evaluate_trajectories(md["top"], [md["ref"]], [md["noisy"]], tmp_path / "all", lag_ps=2.0,
                                          posebusters_frames=0, conditioned_frames=[])["model"]
    for key in ("bond_ok_fraction", "clashes_per_frame", "ligand_valid_fraction"):
        assert weighted[key] == unweighted[key], key


def test_weights_count_mismatch_names_the_file(md, tmp_path):
    w = _weights_file(tmp_path / "short.npz", np.full(N_FRAMES - 1, 1.0 / (N_FRAMES - 1)))
    with pytest.raises(HemeplmError, match=rf"short\.npz: holds {N_FRAMES - 1} weights but the generated "
                                           rf"trajectories have {N_FRAMES} frames"):
        evaluate_trajectories(md["top"], [md["ref"]], [md["noisy"]], tmp_path / "x", weights=w)
    assert not (tmp_path / "x" / "metrics.json").exists()


# ----------------------------------------------------------------------------- backbone checks and the physical filter

def _turned(x0: np.ndarray, moving: np.ndarray, origin: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """x0 with the atoms ``moving`` turned by ``degrees`` about ``axis`` through ``origin``."""
    from scipy.spatial.transform import Rotation

    x = x0.copy()
    rot = Rotation.from_rotvec(np.deg2rad(degrees) * axis / np.linalg.norm(axis)).as_matrix()
    x[moving] = (x0[moving] - origin) @ rot.T + origin
    return x


def test_backbone_checks_see_a_twisted_and_a_bent_peptide_bond(pocket_geometry):
    """The tail 87-89 turned 60° about the bond C86-N87 twists ω(87) only; bent 15° about N87 in the plane of
    C86-N87-CA87, it opens the angle C-N-CA only. The bond 89-98 the topology adds is a chain break, not counted."""
    geom, x0 = pocket_geometry
    assert len(geom.peptide) == 10 and len(geom.rama) == 8        # two chains of six residues
    base = backbone_checks(x0[None], geom)
    assert base["ramachandran_outlier_fraction"] == 0.0 and base["omega_outlier_fraction"] == 0.0
    c86, n87, ca87 = (_atom(geom, f"resSeq {r} and name {n}") for r, n in ((86, "C"), (87, "N"), (87, "CA")))
    tail = geom.topology.select("protein and resSeq 87 to 89")
    twisted = backbone_checks(_turned(x0, tail, x0[n87], x0[n87] - x0[c86], 60.0)[None], geom)
    assert twisted["omega_outlier_fraction"] == pytest.approx(1 / 10)
    assert twisted["peptide_angle_outlier_fraction"] == base["peptide_angle_outlier_fraction"]
    normal = np.cross(x0[c86] - x0[n87], x0[ca87] - x0[n87])
    moving = tail[tail != n87]
    for degrees in (15.0, -15.0):
        bent = _turned(x0, moving, x0[n87], normal, degrees)
        angle = backbone_angles(bent[None], geom)["c_n_ca"][0]
        if angle.max() > 125:  # the way that opens it
            break
    bent_checks = backbone_checks(bent[None], geom)
    assert bent_checks["peptide_angle_outlier_fraction"] == pytest.approx(
        base["peptide_angle_outlier_fraction"] + 1 / 20)              # one of 2 angles x 10 bonds
    assert bent_checks["omega_outlier_fraction"] == 0.0


def test_ramachandran_regions():
    general, glycine, proline = (RAMA_CLASSES.index(c) for c in ("general", "glycine", "proline"))
    cases = [  # (phi, psi, class, allowed)
        (-60, -45, general, True), (-120, 130, general, True), (-75, 145, general, True), (60, 40, general, True),
        (-170, -170, general, True), (0, 0, general, False), (-90, -135, general, False), (5, 150, general, False),
        (130, 0, general, False), (-80, 180, glycine, True), (80, -170, glycine, True), (5, 100, glycine, False),
        (-65, -40, proline, True), (-65, 145, proline, True), (60, 40, proline, False), (-150, 150, proline, False),
        (-65, -120, proline, False),
    ]
    phi, psi, kind, allowed = (np.array(c) for c in zip(*cases))
    assert ramachandran_allowed(phi, psi, kind).tolist() == allowed.tolist()


def test_ramachandran_outliers_in_a_frame(pocket_geometry):
    """φ(87) turned to 0° (the tail turned about N87-CA87): an outlier (0° is outside every class's regions)."""
    geom, x0 = pocket_geometry
    n87, ca87 = _atom(geom, "resSeq 87 and name N"), _atom(geom, "resSeq 87 and name CA")
    moving = np.setdiff1d(geom.topology.select("protein and resSeq 87 to 89"), [n87, ca87])
    row = int(np.flatnonzero(geom.rama[:, 2] == ca87)[0])
    phi = backbone_angles(x0[None], geom)["phi"][0, row]
    turned = next(x for x in (_turned(x0, moving, x0[ca87], x0[ca87] - x0[n87], d) for d in (phi, -phi))
                  if abs(backbone_angles(x[None], geom)["phi"][0, row]) < 1)
    assert backbone_checks(turned[None], geom)["ramachandran_outlier_fraction"] >= 1 / len(geom.rama)


def test_physical_filter(pocket_geometry):
    """A frame passes with its MD geometry; two atoms of different residues 0.5 Å apart fail it (of one residue
    they do not), and so does a peptide bond stretched by 1 Å, unless only the ligand was generated."""
    geom, x0 = pocket_geometry
    c8, ca99 = _atom(geom, "resname TMP and name C8"), _atom(geom, "resSeq 99 and name CA")
    onto = x0.copy()
    onto[c8] = x0[ca99] + 0.5 / np.sqrt(3)
    ca84, cb84 = _atom(geom, "resSeq 84 and name CA"), _atom(geom, "resSeq 84 and name CB")
    inside = x0.copy()
    inside[cb84] = x0[ca84] + 0.5 / np.sqrt(3)
    c86, n87 = _atom(geom, "resSeq 86 and name C"), _atom(geom, "resSeq 87 and name N")
    stretched = _stretched(x0, geom.topology.select("protein and resSeq 87 to 89"), c86, n87, by=1.0)
    frames = np.stack([x0, onto, inside, stretched])
    assert physical_filter(frames, geom).tolist() == [True, False, True, False]
    assert physical_filter(frames, geom, atoms=geom.is_ligand).tolist() == [True, False, True, True]
    assert validity_of(frames, geom)["physical_filter_pass_fraction"] == 0.5


def validity_of(frames: np.ndarray, geom: Geometry) -> dict:
    """:func:`validity` against the frames' own first frame as the reference."""
    from types import SimpleNamespace

    return validity(frames, SimpleNamespace(geom=geom, bond_lengths=bond_lengths(frames[:1], geom)[0]))


def test_transition_paths_count_only_generated_frames():
    """A path whose given last frame alone is in the end state has not arrived."""
    stuck, through = np.array([0, 0, 0, 0, 2]), np.array([0, 1, 2, 2, 2])
    interior = [np.array([False, True, True, True, False])] * 2
    assert transition_paths([stuck], [2])["tps_success_fraction"] == 1.0           # counting the given end frame
    out = transition_paths([stuck, through], [2, 2], interior)
    assert out["tps_success_fraction"] == 0.5 and out["tps_path_frames_mean"] == 2.0


# ----------------------------------------------------------------------------- what is scored, and the columns

@pytest.fixture(scope="module")
def short_pocket(pocket):
    """The pocket's first 40 reference frames saved 2 ps apart, and its topology."""
    import mdtraj

    t = mdtraj.load(str(pocket["ref"]), top=str(pocket["top"]))[:40]
    t.time = np.arange(40) * 2.0
    path = pocket["out"].parent / "short_ref.xtc"
    t.save_xtc(str(path))
    return {"top": pocket["top"], "ref": path, "xyz": t.xyz * 10.0, "topology": t.topology}


def _write(topology, xyz: np.ndarray, path: Path, dt_ps: float) -> Path:
    import mdtraj

    mdtraj.Trajectory(xyz.astype(np.float32) / 10.0, topology, time=np.arange(len(xyz)) * dt_ps).save(str(path))
    return path


def test_conditioned_frames_and_spacing_come_from_the_generated_files(short_pocket, tmp_path):
    """A forecast whose given frame 0 is broken scores like its generated frames alone; the frame spacing is the
    generated files' own (5 ps), not the reference's (2 ps), and a summary's spacing and frames win."""
    geom_top = short_pocket["topology"]
    xyz = short_pocket["xyz"][:10].copy()
    c8 = int(geom_top.select("resname TMP and name C8")[0])
    ca99 = int(geom_top.select("resSeq 99 and name CA")[0])
    xyz[0, c8] = xyz[0, ca99] + 0.3                           # frame 0: the xylene in a Cα
    gen = _write(geom_top, xyz, tmp_path / "gen.xtc", 5.0)
    run = lambda out, **kw: evaluate_trajectories(short_pocket["top"], [short_pocket["ref"]], [gen], tmp_path / out,
                                                  posebusters_frames=0, **kw)
    forecast = run("forecast")
    alone = evaluate_trajectories(short_pocket["top"], [short_pocket["ref"]],
                                  [_write(geom_top, xyz[1:], tmp_path / "alone.xtc", 5.0)], tmp_path / "alone",
                                  posebusters_frames=0, conditioned_frames=[])
    everything = run("everything", conditioned_frames=[])
    for key in ("clashes_per_frame", "physical_filter_pass_fraction", "omega_outlier_fraction", "torsion_jsd",
                "ramachandran_outlier_fraction", "bond_ok_fraction", "ligand_valid_fraction"):
        assert forecast["model"][key] == pytest.approx(alone["model"][key]), key
    assert everything["model"]["clashes_per_frame_protein_ligand"] > forecast["model"]["clashes_per_frame_protein_ligand"]
    info = forecast["info"]
    assert info["scored_frames"]["model"] == [9] and info["conditioned"]["model"] == "--task forecast: frame 0"
    assert info["generated_timestep_ps"] == 5.0 and info["reference_timestep_ps"] == 2.0
    assert info["generated_timestep_source"] == "the generated files' frame times"
    summary = tmp_path / "gen.json"
    summary.write_text(json.dumps({"task": "forecast", "timestep_ps": 10.0, "conditioned_frames": [0, 1],
                                   "trajectories": [str(gen)]}))
    stated = run("stated")["info"]
    assert stated["generated_timestep_ps"] == 10.0 and stated["scored_frames"]["model"] == [8]
    assert stated["generated_timestep_source"] == f"timestep_ps of {summary}"
    with pytest.raises(HemeplmError, match=r"gen\.json: says the generated frames are 10 ps apart, but "
                                           r"--generated-timestep-ps is 5"):
        run("refused", generated_timestep_ps=5.0)
    with pytest.raises(HemeplmError, match=r"gen\.json: was sampled with --task forecast; evaluate it with --task "
                                           "forecast"):
        run("refused", task="tps")
    summary.unlink()
    with pytest.raises(HemeplmError, match=r"gen\.xtc: --task upsample: which frames were given needs the sample "
                                           "summary"):
        run("refused", task="upsample")


def test_tps_success_against_the_given_end_state(pocket, tmp_path):
    """A 'path' that stays at the start and whose given last frame alone is the reference's end frame fails."""
    import mdtraj

    t = mdtraj.load(str(pocket["ref"]), top=str(pocket["top"]))
    xyz = np.repeat(t.xyz[:1] * 10.0, len(t.xyz), axis=0)
    xyz[-1] = t.xyz[-1] * 10.0
    stuck = _write(t.topology, xyz, tmp_path / "stuck.xtc", 1.0)
    metrics = evaluate_trajectories(pocket["top"], [pocket["ref"]], [pocket["ref"]], tmp_path / "tps", task="tps",
                                    raw=[stuck], posebusters_frames=0)
    assert metrics["info"]["scored_frames"]["raw"] == [len(xyz) - 2]
    assert metrics["info"]["tps_end_state"] == "state of the reference's last frame"
    assert metrics["raw"]["tps_success_fraction"] == 0.0      # counting its given last frame, it would have arrived
    assert metrics["model"]["tps_success_fraction"] == 1.0     # the reference's own path arrives before its end


def test_raw_columns_come_first(short_pocket, tmp_path):
    """--raw and --raw-prior beside --generated and --prior: columns raw, raw_prior, model, prior, static,
    random_walk, reference; the reference has every validity check of its own."""
    rng = np.random.default_rng(5)
    xyz = short_pocket["xyz"][:8]
    files = {name: _write(short_pocket["topology"], xyz + rng.normal(scale=s, size=xyz.shape), tmp_path / f"{name}.xtc",
                          2.0) for name, s in (("raw", 0.3), ("raw_prior", 0.6), ("gen", 0.1), ("prior", 0.2))}
    out = tmp_path / "eval"
    main(["evaluate", "--topology", str(short_pocket["top"]), "--reference", str(short_pocket["ref"]),
          "--generated", str(files["gen"]), "--prior", str(files["prior"]), "--raw", str(files["raw"]),
          "--raw-prior", str(files["raw_prior"]), "--posebusters-frames", "0", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    table = print_table(metrics)
    assert table.splitlines()[0].split() == ["metric", "better", "raw", "raw_prior", "model", "prior", "static",
                                             "random_walk", "reference"]
    for key in ("omega_outlier_fraction", "ramachandran_outlier_fraction", "peptide_angle_outlier_fraction",
                "physical_filter_pass_fraction"):
        row = next(line.split() for line in table.splitlines() if line.startswith(key + " "))
        assert len(row) == 9 and "-" not in row[2:], row
        assert metrics["info"]["reference"][key] is not None
    assert metrics["raw_prior"]["bond_ok_fraction"] < metrics["raw"]["bond_ok_fraction"] < metrics["model"][
        "bond_ok_fraction"]
    assert metrics["info"]["raw_files"] == [str(files["raw"])] and metrics["info"]["scored_frames"]["raw"] == [7]


def test_inpainting_scores_only_the_inpainted_atoms(short_pocket, tmp_path):
    """With --task inpaint the given protein is not scored: protein-only metrics are null, the rest count only
    terms with an inpainted atom; the baselines keep the given protein."""
    xyz = short_pocket["xyz"][:6].copy()
    top = short_pocket["topology"]
    ligand = top.select("resname TMP")
    xyz[:, ligand] += np.random.default_rng(2).normal(scale=0.05, size=(6, len(ligand), 3))
    gen = _write(top, xyz, tmp_path / "inp.xtc", 2.0)
    (tmp_path / "inp.json").write_text(json.dumps({"task": "inpaint", "conditioned_frames": [],
                                                   "inpainted_atoms": ligand.tolist(), "trajectories": [str(gen)]}))
    metrics = evaluate_trajectories(short_pocket["top"], [short_pocket["ref"]], [gen], tmp_path / "eval",
                                    task="inpaint", posebusters_frames=0)
    for name in ("model", "static", "random_walk"):
        m = metrics[name]
        for key in ("torsion_jsd", "rmsf_pearson", "omega_outlier_fraction", "ramachandran_outlier_fraction",
                    "peptide_angle_outlier_fraction", "bond_ok_fraction_intra_residue", "bond_ok_fraction_peptide",
                    "clashes_per_frame_protein_protein"):
            assert m[key] is None, (name, key)
        assert m["bond_ok_fraction"] == m["bond_ok_fraction_ligand"] and m["physical_filter_pass_fraction"] == 1.0
    assert metrics["info"]["generated_atoms"].endswith(f"({len(ligand)} atoms)")
    assert metrics["info"]["scored_frames"]["model"] == [6]
    assert metrics["info"]["reference"]["omega_outlier_fraction"] is None


def test_window_swelling_finds_the_step_at_each_junction(pocket_geometry):
    """A forecast of 9-frame windows overlapping by 2 frames (starts 0, 7, 14, 21) that swells by 1% at the first
    frame each later window generates and shrinks by 0.5% at its last: the junction step and the step inside a window
    are those changes of the Cα radius of gyration; the first window (given one frame) and a last window that ends
    past the trajectory do not count; a forecast of one window has no junction."""
    from hemeplm.evaluate.trajectory import gyration_radius, window_swelling

    geom, x0 = pocket_geometry
    centre = x0[geom.ca].mean(0)
    scale = np.ones(27)
    for s in (7, 14, 21):
        scale[s + 2:] *= 1.01
        scale[s + 8:] *= 0.995
    x = centre + scale[:, None, None] * (x0 - centre)
    rg = float(gyration_radius(x0[geom.ca]))
    found = window_swelling(x, geom.ca, [0, 7, 14, 21], 2, 9)
    assert found["junctions"] == 2   # the window from frame 21 would end at frame 29, past the 27 frames
    assert abs(found["junction_rg_step_A"] - 0.01 * rg * (1 + 1.01 * 0.995) / 2) < 1e-9
    assert abs(found["window_rg_step_A"] + 0.005 * rg * (1.01 + 1.01 ** 2 * 0.995) / 2) < 1e-9
    assert window_swelling(x[:9], geom.ca, [0], 2, 9)["junctions"] == 0


def test_drift_measures_rmsd_swelling_and_the_pocket_kept(pocket_geometry):
    """A trajectory that only turns rigidly has drifted 0 Å, neither swollen nor shrunk, and keeps its pocket; one
    whose ligand leaves by 20 Å keeps none of it; a Cα shift of known size gives that RMSD, a 10% swelling a Cα
    radius of gyration 10% larger; only frames in the last tenth of the span count."""
    from scipy.spatial.transform import Rotation

    from hemeplm.evaluate.trajectory import drift

    geom, x0 = pocket_geometry
    turns = Rotation.random(21, random_state=0).as_matrix()
    rigid = np.einsum("fij,aj->fai", turns, x0) + 3.0
    found = drift([rigid], geom, 1.0, 20.0)
    assert found["ca_rmsd_end_A"] < 1e-6 and found["pocket_kept_end_fraction"] == 1.0
    assert abs(found["ca_rg_change_end_A"]) < 1e-9
    swollen = np.repeat(x0[None], 21, 0)
    centre = x0[geom.ca].mean(0)
    swollen[18:] = centre + 1.1 * (x0 - centre)  # the last tenth of the span 10% larger about the Cα centroid
    rg = np.sqrt(((x0[geom.ca] - centre) ** 2).sum(-1).mean())
    assert abs(drift([swollen], geom, 1.0, 20.0)["ca_rg_change_end_A"] - 0.1 * rg) < 1e-9
    assert abs(drift([swollen], geom, 1.0, 10.0)["ca_rg_change_end_A"]) < 1e-9  # frames 9-10: not yet
    gone = rigid.copy()
    gone[18:, geom.ligand] += 20.0
    assert drift([gone], geom, 1.0, 20.0)["pocket_kept_end_fraction"] == 0.0
    assert drift([gone], geom, 1.0, 10.0)["pocket_kept_end_fraction"] == 1.0    # frames 9-10: not gone yet
    shifted = np.repeat(x0[None], 21, 0)
    one = geom.ca[0]
    shifted[19:, one] += np.array([0.0, 0.0, 2.0])   # one Cα of K moves 2 Å; superposition shares it out
    k = len(geom.ca)
    translated = 2.0 * np.sqrt((k - 1) / k) / np.sqrt(k)  # RMSD after the best translation; a rotation lowers it
    found = drift([shifted], geom, 1.0, 20.0)["ca_rmsd_end_A"]  # frames 18 (still), 19 and 20 (moved)
    assert 0.8 * translated * 2 / 3 < found <= translated * 2 / 3
    assert math.isnan(drift([shifted], geom, 1.0, 40.0)["ca_rmsd_end_A"])      # no trajectory that long
