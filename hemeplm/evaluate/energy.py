"""Energies and forces predicted for MD frames compared with the MD's: metrics and figures.

Energy and force metrics (:func:`energy_force_metrics`), for ``energy`` (total,
kcal/mol), ``residue_energy`` (per residue and frame, kcal/mol) and ``force``
(every Cartesian component, kcal/mol/Å):

| key | definition |
|---|---|
| ``<q>_mse_<unit>_sq`` | mean squared error, in unit² |
| ``<q>_rmse_<unit>`` | root mean squared error |
| ``<q>_mae_<unit>`` | mean absolute error |
| ``<q>_r2`` | coefficient of determination 1 − SS_res / SS_tot about the true mean |
| ``<q>_pearson`` | Pearson r of predicted and true |
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np

from .stats import pearson

log = logging.getLogger(__name__)


def regression_metrics(pred: np.ndarray, true: np.ndarray, name: str, unit: str) -> dict:
    """MSE, RMSE, MAE, R² and Pearson r of predicted vs true values (flattened).

    Args:
        name: quantity prefix of the keys; unit: unit tag of the keys (``kcal_mol``, ``kcal_mol_A``).
    """
    pred, true = np.ravel(pred).astype(np.float64), np.ravel(true).astype(np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"{name}: predicted has {pred.size} values, true has {true.size}")
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    mse = float((err ** 2).mean())
    return {f"{name}_mse_{unit}_sq": mse, f"{name}_rmse_{unit}": math.sqrt(mse),
            f"{name}_mae_{unit}": float(np.abs(err).mean()),
            f"{name}_r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan,
            f"{name}_pearson": pearson(pred, true)}


def energy_force_metrics(pred_energy: np.ndarray, true_energy: np.ndarray, pred_forces: np.ndarray,
                         true_forces: np.ndarray, pred_res_energy: np.ndarray | None = None,
                         true_res_energy: np.ndarray | None = None) -> dict:
    """Energy, per-residue energy and force errors (see the module table).

    Args:
        pred_energy, true_energy: (F,) total energies in kcal/mol.
        pred_forces, true_forces: (F, A, 3) forces in kcal/mol/Å.
        pred_res_energy, true_res_energy: (F, R) per-residue energies in kcal/mol, or None
            (residue metrics are then left out).
    Returns:
        ``energy_*``, ``force_*`` and, with residue energies, ``residue_energy_*`` keys.
    """
    out = regression_metrics(pred_energy, true_energy, "energy", "kcal_mol")
    if pred_res_energy is not None and true_res_energy is not None:
        out.update(regression_metrics(pred_res_energy, true_res_energy, "residue_energy", "kcal_mol"))
    out.update(regression_metrics(pred_forces, true_forces, "force", "kcal_mol_A"))
    return out


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def evaluate_energies(predict: Callable[[np.ndarray], dict], coords: np.ndarray, true_energy: np.ndarray,
                      true_forces: np.ndarray, topology, out_dir: str | Path,
                      true_res_energy: np.ndarray | None = None, batch_frames: int = 16) -> tuple[dict, list[Path]]:
    """Predict energies and forces of MD frames and compare them with the MD's.

    Args:
        predict: ``predict(coords (F', A, 3) Å) -> {"energy": (F',), "forces": (F', A, 3),
            "residue_energy": (F', R)}`` in kcal/mol and kcal/mol/Å (numpy or torch;
            ``residue_energy`` optional), called on batches of ``batch_frames`` frames.
        coords: (F, A, 3) Å.
        true_energy: (F,) kcal/mol; true_forces: (F, A, 3) kcal/mol/Å.
        topology: mdtraj Topology of the A atoms (R residues) for the B-factor PDBs.
        out_dir: gets ``energy_parity.png``, ``force_parity.png``, ``energy_histogram.png``,
            ``force_error.pdb`` (per-residue mean |ΔF| in kcal/mol/Å as B-factor of frame 0) and,
            with residue energies, ``residue_energy_error.png`` and ``residue_energy_error.pdb``
            (mean |ΔE_res| in kcal/mol; written when R equals the topology's residue count).
        true_res_energy: (F, R) kcal/mol, or None.
    Returns:
        the metrics of :func:`energy_force_metrics` and the files written.
    """
    from tqdm import tqdm

    from .. import plots

    out = Path(out_dir)
    starts = range(0, len(coords), batch_frames)
    preds = [predict(coords[i:i + batch_frames]) for i in tqdm(starts, desc="energies", leave=False,
                                                                disable=len(starts) < 2 or None)]
    pe = np.concatenate([_as_numpy(p["energy"]).reshape(-1) for p in preds])
    pf = np.concatenate([_as_numpy(p["forces"]) for p in preds])
    pr = np.concatenate([_as_numpy(p["residue_energy"]) for p in preds]) \
        if true_res_energy is not None and all("residue_energy" in p for p in preds) else None
    metrics = energy_force_metrics(pe, true_energy, pf, true_forces, pr, true_res_energy)
    atom_res = np.array([a.residue.index for a in topology.atoms])
    force_err = np.linalg.norm(pf - true_forces, axis=-1).mean(0)          # (A,)
    per_res = np.bincount(atom_res, force_err, topology.n_residues) / np.maximum(
        np.bincount(atom_res, minlength=topology.n_residues), 1)
    files = [plots.parity_plot(pe, true_energy, out / "energy_parity.png", "energy", "kcal/mol"),
             plots.parity_plot(pf, true_forces, out / "force_parity.png", "force component", "kcal/mol/Å"),
             plots.energy_histograms(pe, np.asarray(true_energy), out / "energy_histogram.png"),
             plots.write_bfactor_pdb(topology, coords[0], per_res, out / "force_error.pdb")]
    if pr is not None:
        files.append(plots.residue_error_heatmap(pr - true_res_energy, out / "residue_energy_error.png"))
        if pr.shape[1] == topology.n_residues:
            files.append(plots.write_bfactor_pdb(topology, coords[0], np.abs(pr - true_res_energy).mean(0),
                                                 out / "residue_energy_error.pdb"))
        else:
            log.warning("residue energies have %d residues, topology %d: no residue_energy_error.pdb",
                        pr.shape[1], topology.n_residues)
    return metrics, files
