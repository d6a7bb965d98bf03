"""Predicted energies of any trajectory (MD or generated): ``hemeplm energies``.

``hemeplm energies --ckpt CK --topology T --frames TRAJ --out DIR`` writes

* ``DIR/energies.npz``: ``residue_interaction_kcal_mol`` (F, R), the protein–ligand interaction
  energy of each protein residue (:mod:`hemeplm.forcefield.labels` defines it); ``residues`` (R,) names such
  as ``ALA99`` in the topology's order; ``energy_kcal_mol`` (F,) total potential energy and
  ``forces_kcal_mol_A`` (F, A, 3) on the model's atoms;
* ``DIR/residue_interaction.csv``: per residue, the mean and standard deviation over frames;
* ``DIR/residue_interaction.png``: the (frame, residue) heatmap;
* ``DIR/residue_interaction.pdb``: the first frame with each residue's mean in the B-factor column.

With ``--compare``, frames that carry labels (an ``energies_forces.npz`` beside them, as ``hemeplm
label`` or ``hemeplm simulate`` write) are also scored: ``DIR/compare/metrics.json`` and figures
(:func:`hemeplm.evaluate.evaluate_energies`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from hemeplm.errors import HemeplmError
from hemeplm.models.surrogate import HemePLM
from hemeplm.io import atomic_write_bytes, check_outputs
from hemeplm.plots import residue_heatmap, write_bfactor_pdb
from hemeplm.evaluate.energy import evaluate_energies

FILES = ("energies.npz", "residue_interaction.csv", "residue_interaction.png", "residue_interaction.pdb")


def predict(model: HemePLM, frames: torch.Tensor, batch: int = 8, progress: bool = False) -> dict[str, np.ndarray]:
    """Energy model predictions of frames (F, A, 3) Å on the model's atoms, in batches.

    Returns ``energy_kcal_mol`` (F,), ``forces_kcal_mol_A`` (F, A, 3) and
    ``residue_interaction_kcal_mol`` (F, R) as numpy arrays.
    """
    from tqdm import tqdm

    if model.energy_model is None or not bool(model.has_energy_stats):
        raise HemeplmError("this checkpoint has no trained energy model (its training data had no energy labels)")
    device = model.energy_mean.device
    parts = []
    for i in tqdm(range(0, len(frames), batch), desc="energies", unit="batch", disable=not progress):
        p = model.predict_energy(frames[i:i + batch].to(device))
        parts.append({k: v.detach().cpu().numpy() for k, v in p.items()})
    return {"energy_kcal_mol": np.concatenate([p["total"] for p in parts]).astype(np.float64),
            "forces_kcal_mol_A": np.concatenate([p["forces"] for p in parts]).astype(np.float32),
            "residue_interaction_kcal_mol": np.concatenate([p["interaction"] for p in parts]).astype(np.float64)}


def write(model: HemePLM, frames: torch.Tensor, out: str | Path, force: bool = False,
          progress: bool = True) -> list[Path]:
    """Predict for ``frames`` (F, A, 3) Å and write :data:`FILES` into ``out``; returns their paths.

    Refuses to overwrite existing files unless ``force``.
    """

    out = Path(out)
    paths = [out / f for f in FILES]
    check_outputs(paths, force, out)
    if len(frames) == 0:
        raise HemeplmError("no frames to predict for", out)
    out.mkdir(parents=True, exist_ok=True)
    pred = predict(model, frames, progress=progress)
    names = list(model.static_info["interaction_residues"])
    inter = pred["residue_interaction_kcal_mol"]
    buf = io.BytesIO()
    np.savez_compressed(buf, residues=np.asarray(names), **pred)
    atomic_write_bytes(paths[0], buf.getvalue())
    mean, std = inter.mean(0), inter.std(0)
    rows = ["residue,mean_kcal_mol,std_kcal_mol"] + [f"{n},{m:.4f},{s:.4f}" for n, m, s in zip(names, mean, std)]
    atomic_write_bytes(paths[1], ("\n".join(rows) + "\n").encode())
    residue_heatmap(inter, paths[2], names, "interaction energy with the ligand (kcal/mol)")
    top = model.topology()
    per_residue = np.zeros(top.n_residues)
    per_residue[[r.index for r in top.residues if r.is_protein]] = mean
    write_bfactor_pdb(top, frames[0].cpu().numpy(), per_residue, paths[3])
    return paths


def label_predictor(model: HemePLM):
    """``predict(coords (F, A, 3) Å) -> {"energy" (F,), "forces" (F, A, 3), "interaction" (F, R)}``,
    the model's predictions under the labels' names, as :func:`~hemeplm.evaluate.evaluate_energies` calls it."""

    def predict(coords: np.ndarray) -> dict:
        p = model.predict_energy(torch.as_tensor(coords, device=model.energy_mean.device))
        return {"energy": p["total"], "forces": p["forces"], "interaction": p["interaction"]}

    return predict


def compare(model: HemePLM, system, span: slice, out: str | Path, path: str | Path) -> list[Path]:
    """Score predictions for the labelled frames ``span`` of a loaded one-segment system
    (:class:`~hemeplm.data.load.MDSystem` read from ``path``) against its labels.

    Writes ``out/compare/metrics.json`` (energy, force and interaction metrics with the
    training-mean baseline) and the figures; returns their paths.
    """

    if system.energies[0] is None:
        raise HemeplmError("has no energies_forces.npz beside it to compare with", path)
    coords = system.segments[0][span]
    inter = system.interactions[0]
    folder = Path(out) / "compare"
    metrics, files = evaluate_energies(label_predictor(model), coords, system.energies[0][span], system.forces[0][span],
                                       model.topology(), folder, None if inter is None else inter[span],
                                       model.interaction_mean.cpu().numpy())
    metrics["n_frames"] = int(len(coords))
    atomic_write_bytes(folder / "metrics.json", json.dumps(metrics, indent=2).encode())
    return [folder / "metrics.json", *files]
