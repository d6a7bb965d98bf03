"""Figures for evaluation (PNG, matplotlib's Agg backend) and B-factor PDBs.

Every function takes arrays, writes one file (atomically: a temporary file, then a rename) and
returns its path. Axes carry
units: energies in kcal/mol, forces in kcal/mol/Å, distances in Å, free
energies in kT.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from hemeplm.io import atomic_save, atomic_write_text  # noqa: E402

DPI = 120
#: at most this many points in a scatter plot (an evenly spaced subset is drawn)
MAX_SCATTER_POINTS = 20_000


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def parity_plot(pred: np.ndarray, true: np.ndarray, path: str | Path, quantity: str, unit: str,
                title: str | None = None) -> Path:
    """Predicted vs true scatter with the y = x diagonal.

    Args:
        pred, true: arrays of the same shape (flattened), e.g. (F,) energies or
            (F, A, 3) force components.
        quantity, unit: axis label parts, e.g. ``"energy"``, ``"kcal/mol"``.
        title: above the plot (e.g. the data and the errors), when given.
    """
    pred, true = np.ravel(pred), np.ravel(true)
    take = np.linspace(0, len(true) - 1, min(len(true), MAX_SCATTER_POINTS)).astype(int)
    lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
    fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    ax.scatter(true[take], pred[take], s=4, alpha=0.5, lw=0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel(f"true {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.locator_params(nbins=5)  # long tick labels (total energies) stay apart
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def residue_heatmap(values: np.ndarray, path: str | Path, residue_labels: list[str] | None = None,
                    label: str = "value per residue") -> Path:
    """Per-residue values over frames (an energy, or its error), diverging colours centred at 0.

    Args:
        values: (F, R) in the units of ``label``.
        residue_labels: (R,) names for the x ticks (thinned to ~20).
        label: the colour bar's label.
    """
    bound = max(float(np.abs(values).max()), 1e-9)
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                   norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("residue")
    ax.set_ylabel("frame")
    if residue_labels is not None:
        ticks = np.unique(np.linspace(0, len(residue_labels) - 1, min(20, len(residue_labels))).astype(int))
        ax.set_xticks(ticks, [residue_labels[t] for t in ticks], rotation=90, fontsize=7)
    return _save(fig, path)


def energy_histograms(pred: np.ndarray, true: np.ndarray, path: str | Path, bins: int = 40) -> Path:
    """Overlaid histograms of true and predicted energies.

    Args:
        pred, true: (F,) total energies in kcal/mol.
    """
    edges = np.histogram_bin_edges(np.concatenate([true, pred]), bins=bins)
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    ax.hist(true, bins=edges, alpha=0.6, label="true (MD)")
    ax.hist(pred, bins=edges, alpha=0.6, label="predicted")
    ax.set_xlabel("potential energy (kcal/mol)")
    ax.set_ylabel("frames")
    ax.legend()
    return _save(fig, path)


def tica_fes(histograms: dict[str, np.ndarray], edges: tuple[np.ndarray, np.ndarray], path: str | Path) -> Path:
    """Free-energy surfaces -ln p (kT, minimum at 0) on TIC1/TIC2, one panel per ensemble.

    Args:
        histograms: name -> (B1, B2) counts on the common grid (e.g. reference, model).
        edges: bin edges along TIC1 (B1 + 1,) and TIC2 (B2 + 1,).
    """
    surfaces = {}
    for name, counts in histograms.items():
        with np.errstate(divide="ignore"):
            f = -np.log(counts / counts.sum())
        surfaces[name] = f - f[np.isfinite(f)].min()
    vmax = max(float(s[np.isfinite(s)].max()) for s in surfaces.values()) or 1.0
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.2 * len(surfaces), 3.8), squeeze=False,
                             layout="constrained")
    for ax, (name, f) in zip(axes[0], surfaces.items()):
        mesh = ax.pcolormesh(edges[0], edges[1], np.ma.masked_invalid(f).T, cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(name)
        ax.set_xlabel("TIC 1 (kinetic-map units)")
        ax.set_ylabel("TIC 2 (kinetic-map units)")
    fig.colorbar(mesh, ax=axes[0].tolist(), label="free energy −ln p (kT)")
    return _save(fig, path)


def rmsf_plot(rmsf: dict[str, np.ndarray], residue_numbers: np.ndarray, path: str | Path) -> Path:
    """Per-residue Cα RMSF of several ensembles.

    Args:
        rmsf: name -> (R,) RMSF in Å (e.g. reference, model, static, random_walk).
        residue_numbers: (R,) residue sequence numbers for the x axis.
    """
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for name, values in rmsf.items():
        ax.plot(residue_numbers, values, lw=1.2, label=name)
    ax.set_xlabel("residue number")
    ax.set_ylabel("Cα RMSF (Å)")
    ax.legend()
    return _save(fig, path)


def contact_plot(frequencies: dict[str, np.ndarray], residue_labels: list[str], path: str | Path) -> Path:
    """Protein–ligand contact frequency per residue (residues in contact in any ensemble).

    Args:
        frequencies: name -> (R,) fraction of frames in contact.
        residue_labels: (R,) residue names for the x ticks.
    """
    values = np.stack(list(frequencies.values()))
    shown = np.flatnonzero(values.max(0) > 0)
    if len(shown) == 0:
        shown = np.arange(min(1, values.shape[1]))
    width = 0.8 / len(frequencies)
    fig, ax = plt.subplots(figsize=(min(16.0, max(5.0, 0.1 * len(shown) * len(frequencies))), 3.8),
                           layout="constrained")
    x = np.arange(len(shown))
    for k, (name, freq) in enumerate(frequencies.items()):
        ax.bar(x + (k - (len(frequencies) - 1) / 2) * width, freq[shown], width=width, label=name)
    ax.set_xticks(x, [residue_labels[i] for i in shown], rotation=90, fontsize=7)
    ax.set_xlabel("residue")
    ax.set_ylabel("contact frequency (fraction of frames)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_bfactor_pdb(topology, xyz: np.ndarray, residue_values: np.ndarray, path: str | Path) -> Path:
    """A PDB of one frame with a per-residue value in the B-factor column.

    The PDB format holds B-factors in (-10, 100); larger values are divided by a
    power of ten, written in a REMARK line (``B-FACTOR = VALUE / 10^k``).

    Args:
        topology: mdtraj Topology (A atoms, R residues).
        xyz: (A, 3) coordinates in Å.
        residue_values: (R,) one value per residue of ``topology``.
    """
    import mdtraj

    values = np.asarray(residue_values, dtype=np.float64)
    if values.shape != (topology.n_residues,):
        raise ValueError(f"residue_values has shape {values.shape}; the topology has {topology.n_residues} residues")
    values = np.nan_to_num(values)
    span = max(float(values.max()), -10.0 * float(values.min()), 0.0)
    power = 0 if span < 99.99 else int(np.ceil(np.log10(span / 99.99)))
    per_atom = values[[a.residue.index for a in topology.atoms]] / 10.0 ** power
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32)[None] / 10.0, topology)
    if not power:
        atomic_save(frame, path, bfactors=per_atom)
        return path
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        frame.save_pdb(str(tmp), bfactors=per_atom)
        atomic_write_text(path, f"REMARK   B-FACTOR = VALUE / 10^{power}\n" + tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return path
