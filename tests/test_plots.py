"""Figures are real PNG images with content; B-factor PDBs hold the per-residue values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemeplm import plots

PDB = Path(__file__).resolve().parents[1] / "data" / "t4l_l99a_xylene" / "complex.pdb"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """``path`` is a non-empty PNG that matplotlib reads back as an image of at least 200 × 200 pixels."""
    import matplotlib.pyplot as plt

    path = Path(path)
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = plt.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 200, (path, image.shape)
    assert image[..., :3].std() > 0.01, f"{path} is blank"


def test_energy_figures(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.normal(-1000.0, 20.0, size=50)
    pred = true + rng.normal(0.0, 3.0, size=50)
    forces = rng.normal(size=(50, 30, 3))
    assert_png(plots.parity_plot(pred, true, tmp_path / "e.png", "energy", "kcal/mol"))
    assert_png(plots.parity_plot(forces + 0.1, forces, tmp_path / "f.png", "force component", "kcal/mol/Å"))
    assert_png(plots.energy_histograms(pred, true, tmp_path / "h.png"))
    error = rng.normal(size=(50, 12))
    assert_png(plots.residue_heatmap(error, tmp_path / "r.png", [f"ALA{i}" for i in range(12)]))


def test_trajectory_figures(tmp_path):
    rng = np.random.default_rng(1)
    edges = (np.linspace(-2, 2, 31), np.linspace(-1, 1, 31))
    ref = np.histogram2d(rng.normal(size=500), rng.normal(scale=0.4, size=500), bins=edges)[0]
    gen = np.histogram2d(rng.normal(0.5, size=500), rng.normal(scale=0.3, size=500), bins=edges)[0]
    assert_png(plots.tica_fes({"reference": ref, "model": gen}, edges, tmp_path / "fes.png"))
    numbers = np.arange(1, 41)
    rmsf = {"reference": rng.random(40), "model": rng.random(40)}
    assert_png(plots.rmsf_plot(rmsf, numbers, tmp_path / "rmsf.png"))
    freq = {"reference": (rng.random(40) > 0.8) * rng.random(40), "model": (rng.random(40) > 0.8) * 1.0}
    assert_png(plots.contact_plot(freq, [f"GLY{i}" for i in numbers], tmp_path / "contacts.png"))


def _bfactors(path: Path) -> np.ndarray:
    return np.array([float(line[60:66]) for line in path.read_text().splitlines() if line.startswith(("ATOM", "HETATM"))])


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_bfactor_pdb(tmp_path, scale):
    import mdtraj

    t = mdtraj.load(str(PDB))
    values = np.arange(t.topology.n_residues) / t.topology.n_residues * 50.0 * scale
    path = plots.write_bfactor_pdb(t.topology, t.xyz[0] * 10.0, values, tmp_path / "b.pdb")
    expected = values[[a.residue.index for a in t.topology.atoms]]
    text = path.read_text()
    divisor = 1.0 if scale == 1.0 else 10.0 ** int(text.split("10^")[1].split()[0])
    assert ("REMARK   B-FACTOR" in text) == (scale != 1.0)
    np.testing.assert_allclose(_bfactors(path) * divisor, expected, atol=0.006 * divisor)
    back = mdtraj.load(str(path))
    np.testing.assert_allclose(back.xyz[0], t.xyz[0], atol=1e-3)
    with pytest.raises(ValueError, match="residues"):
        plots.write_bfactor_pdb(t.topology, t.xyz[0] * 10.0, values[:-1], tmp_path / "bad.pdb")
