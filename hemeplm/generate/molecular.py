"""A molecular energy model's energies and forces for any frames of its molecules: ``hemeplm energies``
with a checkpoint trained on molecule data sets (``qm.molecule``).

The model sees elements and positions only, so the topology may list the atoms in any order: the
forces come back in the topology's order. The topology must hold the same elements as a training
molecule (the energy zero is fitted to those compositions). Writes ``OUT/energies.npz`` with
``energy_kcal_mol`` (F,) and ``forces_kcal_mol_A`` (F, A, 3); with ``compare``, frames whose labels
lie beside them (``energies_forces.npz``, as ``hemeplm dataset`` and ``hemeplm label`` write) are
also scored into ``OUT/compare/metrics.json`` (energy MAE and R², force MAE and R², beside predicting
that molecule's training mean energy and zero forces).

A model trained on a fragment set (``qm.molecule: [chignolin-fragments]``) predicts a whole peptide as AI2BMD
does: cut into its ACE-X-NME units and ACE-NME overlaps, each predicted by the model, recombined with the
Coulomb and Lennard-Jones terms between residues that share no fragment (Coulomb with GFN2-xTB's charges of the
fragments, averaged over up to 10 of the frames; Amber14's Lennard-Jones:
:class:`~hemeplm.forcefield.fragmentation.Fragmented` with ``long_range="gfn2"``); every fragment must be one the
model was trained on.
Its fragments' energy zero is not the whole peptide's, so ``compare`` also reports the mean offset and the
energy MAE after removing it (``relative_energy_mae``), with predicting the labels' own mean as the baseline.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from hemeplm.data.load import ENERGY_FILE, frame_span, load_topology, load_trajectory
from hemeplm.errors import HemeplmError, require_file
from hemeplm.io import atomic_write_bytes, check_outputs
from hemeplm.forcefield.fragmentation import Fragmented, fragments
from hemeplm.models.molecular import predict
from hemeplm.train.molecular import load_molecular, score


def _formula(numbers) -> str:
    import mdtraj

    counts = Counter(int(z) for z in numbers)
    return "".join(f"{mdtraj.element.Element.getByAtomicNumber(z).symbol}{n if n > 1 else ''}"
                   for z, n in sorted(counts.items(), key=lambda kv: (kv[0] != 6, kv[0] != 1, kv[0])))


def write(ckpt_path: str | Path, topology: str | Path, frames: str | Path, out: str | Path, start: int | None = None,
          stop: int | None = None, compare: bool = False, force: bool = False, device: str = "cpu") -> list[Path]:
    """Predict energies and forces of ``frames[start:stop]`` and write them (module docstring); returns the paths."""
    out = Path(out)
    paths = [out / "energies.npz"] + ([out / "compare" / "metrics.json"] if compare else [])
    check_outputs(paths, force, out)
    model, ckpt = load_molecular(ckpt_path, device)
    top_path = require_file(topology)
    top = load_topology(top_path)
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in top.atoms])
    trained = ckpt["static"]["molecules"]
    match = [name for name, z in trained.items() if sorted(numbers.tolist()) == sorted(np.asarray(z).tolist())]
    if not match:
        check_fragments(top, numbers, trained, top_path)
    traj = load_trajectory(frames, top, top_path)
    span = frame_span(traj.n_frames, start, stop, frames)
    xyz = traj.xyz[span].astype(np.float64) * 10.0
    if match:
        energy, forces = predict(model, numbers, xyz, device=device)
    else:  # the long-range charges from GFN2-xTB on the frames to predict
        energy, forces = Fragmented(top, numbers, "gfn2", model, reference=xyz)(xyz)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, energy_kcal_mol=energy, forces_kcal_mol_A=forces.astype(np.float32),
                        frame_index=np.arange(traj.n_frames)[span])
    atomic_write_bytes(paths[0], buf.getvalue())
    if compare:
        labels = Path(frames).parent / ENERGY_FILE
        if not labels.exists():
            raise HemeplmError(f"has no {ENERGY_FILE} beside it to compare with", frames)
        with np.load(labels) as z:
            true_e, true_f = z["energy_kcal_mol"], z["forces_kcal_mol_A"]
        if true_e.shape != (traj.n_frames,) or true_f.shape != (traj.n_frames, len(numbers), 3):
            raise HemeplmError(f"its labels do not match the {traj.n_frames} frames of {len(numbers)} atoms", labels)
        true_e, true_f = true_e[span].astype(np.float64), true_f[span].astype(np.float64)
        metrics = score(energy, forces, true_e, true_f)
        if match:
            zero = ckpt["static"]["energy_mean"][match[0]]
        else:  # the fragments' zero is not the peptide's: score relative energies too
            zero = float(true_e.mean())
            offset = float((energy - true_e).mean())
            metrics |= {"energy_offset": offset,
                        "relative_energy_mae": float(np.abs(energy - offset - true_e).mean())}
        metrics |= {f"mean_baseline_{k}": v for k, v in
                    score(np.full(len(true_e), zero), np.zeros_like(true_f), true_e, true_f).items()}
        metrics["n_frames"] = int(len(true_e))
        paths[1].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(paths[1], json.dumps(metrics, indent=2).encode())
    return paths


def check_fragments(top, numbers: np.ndarray, trained: dict, top_path: Path) -> None:
    """Whether a model trained on ``trained``'s molecules can predict this one from its fragments (module
    docstring); if not, an error naming the file: a molecule the model was not trained on, or a fragment of it the
    model has not seen."""
    names = ", ".join(f"{name} ({_formula(z)})" for name, z in trained.items())
    refusal = (f"holds {_formula(numbers)}, but the model was trained on {names}; it predicts for those "
               f"molecules' frames")
    if not any("/" in name for name in trained):
        raise HemeplmError(refusal + " only", top_path)
    try:
        parts = fragments(top, numbers)
    except Exception as exc:  # not a peptide OpenMM's Amber14 templates can read
        raise HemeplmError(f"{refusal}, or for a peptide cut into its fragments, which this is not ({exc})",
                           top_path) from exc
    seen = {tuple(sorted(np.asarray(z).tolist())) for z in trained.values()}
    unseen = [p.name for p in parts if tuple(sorted(p.numbers.tolist())) not in seen]
    if unseen:
        raise HemeplmError(f"its fragments {', '.join(unseen)} are none the model was trained on ({names})", top_path)
