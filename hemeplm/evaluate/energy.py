"""Energies, forces and interaction energies predicted for MD frames compared with the MD's labels.

Regression metrics (:func:`regression_metrics`), for ``energy`` (total potential, kcal/mol),
``force`` (every Cartesian component, kcal/mol/Å), ``interaction`` (per protein residue and
frame, the residue's interaction energy with the ligand, kcal/mol) and ``interaction_total``
(per frame, summed over residues):

| key | definition |
|---|---|
| ``<q>_mse_<unit>_sq`` | mean squared error, in unit² |
| ``<q>_rmse_<unit>`` | root mean squared error |
| ``<q>_mae_<unit>`` | mean absolute error |
| ``<q>_r2`` | coefficient of determination 1 − SS_res / SS_tot about the true mean |
| ``<q>_pearson`` | Pearson r of predicted and true |

Interaction energies are also read the way that predicting each residue's mean cannot meet
(:func:`interaction_metrics`): ``interaction_fluctuation_r2`` is the R² of the frame-to-frame
fluctuations over *pocket residues* (each residue's values centred on its own mean; residues whose
true values have a standard deviation above ``min_std`` = 0.2 kcal/mol; their count is
``interaction_pocket_residues``). Every interaction metric has a ``mean_baseline_`` twin: the
prediction "each residue's training mean", whose fluctuation R² is 0 by construction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from hemeplm.data.parameters import residue_labels
from hemeplm.evaluate.stats import pearson
from hemeplm.plots import energy_histograms, parity_plot, residue_heatmap, write_bfactor_pdb


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


def interaction_metrics(pred: np.ndarray, true: np.ndarray, train_mean: np.ndarray, min_std: float = 0.2) -> dict:
    """Per-residue interaction energy metrics with the training-mean baseline (see the module docstring).

    Args:
        pred, true: (F, R) kcal/mol.
        train_mean: (R,) each residue's mean over the training frames.
        min_std: pocket residues vary by more than this (kcal/mol) in ``true``.
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    base = np.broadcast_to(np.asarray(train_mean, np.float64), true.shape)
    out = {}
    for prefix, p in (("", pred), ("mean_baseline_", base)):
        out.update({prefix + k: v for k, v in regression_metrics(p, true, "interaction", "kcal_mol").items()})
        out.update({prefix + k: v for k, v in regression_metrics(p.sum(1), true.sum(1), "interaction_total",
                                                                 "kcal_mol").items()})
    pocket = true.std(0) > min_std
    out["interaction_pocket_residues"] = int(pocket.sum())
    dt = (true - true.mean(0))[:, pocket]
    ss = float((dt ** 2).sum())
    for prefix, p in (("", pred), ("mean_baseline_", base)):
        dp = (p - p.mean(0))[:, pocket]
        out[prefix + "interaction_fluctuation_r2"] = 1.0 - float(((dp - dt) ** 2).sum()) / ss if ss > 0 else math.nan
    return out


def energy_force_metrics(pred_energy: np.ndarray, true_energy: np.ndarray, pred_forces: np.ndarray,
                         true_forces: np.ndarray) -> dict:
    """Total energy and force errors (see the module table).

    Args:
        pred_energy, true_energy: (F,) total energies in kcal/mol.
        pred_forces, true_forces: (F, A, 3) forces in kcal/mol/Å.
    Returns:
        ``energy_*`` and ``force_*`` keys.
    """
    out = regression_metrics(pred_energy, true_energy, "energy", "kcal_mol")
    out.update(regression_metrics(pred_forces, true_forces, "force", "kcal_mol_A"))
    return out


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def evaluate_energies(predict: Callable[[np.ndarray], dict], coords: np.ndarray, true_energy: np.ndarray,
                      true_forces: np.ndarray, topology, out_dir: str | Path,
                      true_interaction: np.ndarray | None = None, train_mean: np.ndarray | None = None,
                      batch_frames: int = 16) -> tuple[dict, list[Path]]:
    """Predict energies and forces of MD frames and compare them with the MD's labels.

    Args:
        predict: ``predict(coords (F', A, 3) Å) -> {"energy": (F',), "forces": (F', A, 3),
            "interaction": (F', R)}`` in kcal/mol and kcal/mol/Å (numpy or torch; ``interaction``
            optional), called on batches of ``batch_frames`` frames.
        coords: (F, A, 3) Å.
        true_energy: (F,) kcal/mol; true_forces: (F, A, 3) kcal/mol/Å.
        topology: mdtraj Topology of the A atoms; its protein residues, in order, are the R residues.
        out_dir: gets ``energy_parity.png``, ``force_parity.png``, ``energy_histogram.png``,
            ``force_error.pdb`` (per-residue mean |ΔF| in kcal/mol/Å as B-factor of frame 0) and,
            with interaction energies, ``interaction_parity.png`` (fluctuations about each
            residue's mean), ``interaction_error.png`` (heatmap) and ``interaction_error.pdb``
            (mean |ΔE| per residue in kcal/mol as B-factor).
        true_interaction: (F, R) kcal/mol, or None; train_mean: (R,) its training means (the baseline).
    Returns:
        the metrics of :func:`energy_force_metrics` and :func:`interaction_metrics`, and the files written.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    starts = range(0, len(coords), batch_frames)
    preds = [predict(coords[i:i + batch_frames]) for i in tqdm(starts, desc="energies", leave=False,
                                                                disable=len(starts) < 2 or None)]
    pe = np.concatenate([_as_numpy(p["energy"]).reshape(-1) for p in preds])
    pf = np.concatenate([_as_numpy(p["forces"]) for p in preds])
    metrics = energy_force_metrics(pe, true_energy, pf, true_forces)
    atom_res = np.array([a.residue.index for a in topology.atoms])
    force_err = np.linalg.norm(pf - true_forces, axis=-1).mean(0)          # (A,)
    per_res = np.bincount(atom_res, force_err, topology.n_residues) / np.maximum(
        np.bincount(atom_res, minlength=topology.n_residues), 1)
    files = [parity_plot(pe, true_energy, out / "energy_parity.png", "energy", "kcal/mol"),
             parity_plot(pf, true_forces, out / "force_parity.png", "force component", "kcal/mol/Å"),
             energy_histograms(pe, np.asarray(true_energy), out / "energy_histogram.png"),
             write_bfactor_pdb(topology, coords[0], per_res, out / "force_error.pdb")]
    if true_interaction is not None:
        pi = np.concatenate([_as_numpy(p["interaction"]) for p in preds])
        metrics.update(interaction_metrics(pi, true_interaction, true_interaction.mean(0) if train_mean is None
                                           else train_mean))
        names = residue_labels(topology)[1]
        values = np.zeros(topology.n_residues)
        values[[r.index for r in topology.residues if r.is_protein]] = np.abs(pi - true_interaction).mean(0)
        files += [parity_plot(pi - pi.mean(0), true_interaction - true_interaction.mean(0),
                                    out / "interaction_parity.png", "interaction fluctuation", "kcal/mol"),
                  residue_heatmap(pi - true_interaction, out / "interaction_error.png", names,
                                        "predicted − true interaction energy (kcal/mol)"),
                  write_bfactor_pdb(topology, coords[0], values, out / "interaction_error.pdb")]
    return metrics, files
