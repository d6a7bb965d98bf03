"""Energy labels for training: OpenMM systems from users' topology files and per-residue
protein–ligand interaction energies.

The interaction energy of protein residue ``r`` with the ligand ``L`` in one frame is

    E_r = Σ_{i∈r, j∈L} [ 332.0637 q_i q_j / r_ij + 4 ε_ij ((σ_ij/r_ij)¹² − (σ_ij/r_ij)⁶) ]

over all atoms (hydrogens included), with the force field's own charges and
Lennard-Jones parameters (Lorentz–Berthelot combination from ``NonbondedForce``;
tabulated ``acoef/bcoef`` pair tables, as CHARMM NBFIX and some Amber files
produce, are read from the table instead), no cutoff, vacuum dielectric, in
kcal/mol. Protein–ligand pairs that the force field treats as exceptions
(a covalently bound ligand) use the exception's parameters.

``hemeplm label TOPOLOGY TRAJ... --out DIR`` reruns an existing all-atom
trajectory through OpenMM (``--level mm``, the default; ``--level gfn2`` computes GFN2-xTB
energies and forces of the whole molecule instead, :mod:`hemeplm.forcefield.qm`): for every frame the potential energy, all-atom forces
and these interaction energies, written with the frames (DCD, full float32
precision) into one directory per trajectory, where the data loader finds them.
The labels are computed at exactly the coordinates written, so inputs and labels
agree whatever precision the original file had.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from hemeplm.data.load import ENERGY_FILE, load_topology, load_trajectory, select_ligand
from hemeplm.errors import HemeplmError, require_file
from hemeplm.data.parameters import PairParameters, coulomb_lj, openmm_system, pair_parameters, residue_labels
from hemeplm.forcefield.qm import check_spin, gfn2_frames
from hemeplm.io import atomic_write_bytes, check_outputs

log = logging.getLogger(__name__)


def residue_interactions(params: PairParameters, positions: np.ndarray, residue: np.ndarray, ligand: np.ndarray,
                         n_residues: int) -> np.ndarray:
    """Per-residue protein–ligand interaction energies of frames.

    Args:
        params: the system's pair parameters.
        positions: (F, A, 3) all-atom coordinates in Å.
        residue: (A,) protein residue index in [0, n_residues) of each atom, -1 for atoms that are
            not protein (the ligand, water, ions: their pairs are not counted).
        ligand: (L,) atom indices of the ligand.
        n_residues: R.
    Returns:
        (F, R) kcal/mol.
    """
    prot = np.nonzero(residue >= 0)[0]
    ligand = np.asarray(ligand, dtype=np.int64)
    out = np.zeros((len(positions), n_residues))
    if not len(ligand) or not len(prot):
        return out
    pi, lj = prot[:, None], ligand[None, :]
    lig = set(ligand.tolist())

    def crossing(a: int, b: int) -> bool:
        return (a in lig and residue[b] >= 0) or (b in lig and residue[a] >= 0)

    special = [(a, b, v) for (a, b), v in params.exceptions.items() if crossing(a, b)]
    special_excl = [(a, b) for a, b in params.excluded if crossing(a, b)]
    for f, x in enumerate(np.asarray(positions, dtype=np.float64)):
        r = np.linalg.norm(x[pi] - x[lj], axis=-1)
        per_atom = params.pair_energy(pi, lj, r).sum(1)
        np.add.at(out[f], residue[prot], per_atom)
        for a, b, (qq, s, e) in special:
            p = a if residue[a] >= 0 else b
            d = float(np.linalg.norm(x[a] - x[b]))
            out[f, residue[p]] += coulomb_lj(qq, s, e, d) - params.lb_energy(a, b, d)
        for a, b in special_excl:
            p = a if residue[a] >= 0 else b
            out[f, residue[p]] -= params.table_energy(a, b, float(np.linalg.norm(x[a] - x[b])))
    return out


def frame_labels(system, positions_a: np.ndarray, box_nm=None, progress: bool = True,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Potential energy (F,) kcal/mol and forces (F, A, 3) kcal/mol/Å of frames (F, A, 3) Å."""
    import openmm
    from openmm import unit
    from tqdm import tqdm

    platform = openmm.Platform.getPlatformByName("CPU")
    props = {"Threads": str(threads)} if threads else {}
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, props)
    energies = np.zeros(len(positions_a))
    forces = np.zeros(positions_a.shape, dtype=np.float32)
    for f in tqdm(range(len(positions_a)), desc="OpenMM energies", unit="frame", disable=not progress):
        if box_nm is not None:
            context.setPeriodicBoxVectors(*box_nm[f])
        context.setPositions(positions_a[f].astype(np.float64) / 10.0)
        state = context.getState(getEnergy=True, getForces=True)
        energies[f] = state.getPotentialEnergy().value_in_unit(unit.kilocalorie_per_mole)
        forces[f] = state.getForces(asNumpy=True).value_in_unit(unit.kilocalorie_per_mole / unit.angstrom)
    if not np.isfinite(energies).all():
        bad = int(np.argmax(~np.isfinite(energies)))
        raise HemeplmError(f"frame {bad} has a non-finite force-field energy (overlapping atoms?)")
    return energies, forces


LEVELS = ("mm", "gfn2")


def label_trajectories(topology: str | Path, trajectories: list[str | Path], out: str | Path,
                       forcefield: list[str] | None = None, solvent: str | None = None, cutoff_nm: float = 1.2,
                       ligand: str | None = None, force: bool = False, progress: bool = True, level: str = "mm",
                       charge: int = 0, multiplicity: int = 1) -> list[Path]:
    """Label trajectories and write their labels (what ``hemeplm label`` does).

    Each trajectory ``X.ext`` gets ``out/X/`` with ``traj.dcd`` (the frames labelled),
    ``topology.pdb``, ``labels.json`` and ``energies_forces.npz``: ``time_ps`` (F,),
    ``energy_kcal_mol`` (F,) and ``forces_kcal_mol_A`` (F, A, 3).

    ``level="mm"`` reruns the frames through OpenMM and adds ``residue_interaction_kcal_mol``
    (F, R), ``residues`` (R,) and ``ligand_atoms`` (L,). ``solvent`` None: implicit (OBC2) for a
    prmtop, vacuum otherwise, explicit when the frames have a box.

    ``level="gfn2"`` computes GFN2-xTB (:mod:`hemeplm.forcefield.qm`) for the whole molecule in
    vacuum with total ``charge`` and spin ``multiplicity``. A frame GFN2-xTB cannot compute is left
    out of ``traj.dcd`` and the npz and listed in ``labels.json`` (``failed_frames``, with the
    message); ``frame_index`` (F,) in the npz gives each written frame's index in the input.
    Returns the directories written.
    """
    if level not in LEVELS:
        raise HemeplmError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    top_path = require_file(topology)
    if not trajectories:
        raise HemeplmError("give the trajectory files to label")
    md_top = load_topology(top_path)
    out = Path(out)
    stems = [Path(t).name.split(".")[0] for t in trajectories]
    if len(set(stems)) != len(stems):
        raise HemeplmError(f"trajectory file names must differ (they name the output folders): {stems}")
    dirs = [out / s for s in stems]
    if level == "gfn2":
        numbers = _gfn2_numbers(md_top, top_path, charge, multiplicity, forcefield, solvent)
    check_outputs([d / f for d in dirs for f in (ENERGY_FILE, "traj.dcd", "topology.pdb", "labels.json")], force, out)
    if level == "mm":
        lig = select_ligand(md_top, ligand, top_path)
        if not len(lig):
            log.warning("%s: no ligand: only energies and forces are labelled", top_path)
        residue, names = residue_labels(md_top)
    for traj_path, d in zip(trajectories, dirs):
        traj = load_trajectory(traj_path, md_top, top_path)
        xyz = traj.xyz.astype(np.float64) * 10.0
        if level == "gfn2":
            if traj.unitcell_vectors is not None and solvent != "vacuum":
                raise HemeplmError("the frames have a periodic box, but GFN2-xTB labels are for one molecule in "
                                   "vacuum: strip the solvent first, or pass --solvent vacuum to ignore the box",
                                   traj_path)
            energy, forces, failed = gfn2_frames(numbers, xyz, charge, multiplicity, progress)
            keep = np.setdiff1d(np.arange(traj.n_frames), [f for f, _ in failed])
            if not len(keep):
                raise HemeplmError(f"GFN2-xTB failed on every frame (frame 0: {failed[0][1]})", traj_path)
            arrays = {"time_ps": np.asarray(traj.time, dtype=np.float64)[keep], "energy_kcal_mol": energy[keep],
                      "forces_kcal_mol_A": forces[keep].astype(np.float32), "frame_index": keep}
            meta = {"level": "gfn2", "method": "GFN2-xTB (tblite), vacuum", "charge": int(charge),
                    "multiplicity": int(multiplicity), "n_frames_read": int(traj.n_frames),
                    "failed_frames": [{"frame": int(f), "error": m} for f, m in failed]}
            _write_labelled(d, traj[keep], None, arrays, {"topology": str(top_path), "trajectory": str(traj_path),
                                                          **meta, "n_frames": int(len(keep))})
            if failed:
                log.warning("%s: %d of %d frames failed and were left out (labels.json lists them)", d,
                            len(failed), traj.n_frames)
            log.info("%s: %d frames labelled with GFN2-xTB", d, len(keep))
            continue
        periodic = traj.unitcell_vectors is not None and solvent != "vacuum"
        solv = solvent or ("explicit" if periodic else "implicit" if top_path.name.lower().endswith(
            (".prmtop", ".parm7")) else "vacuum")
        omm_top, system = openmm_system(top_path, forcefield, solv, cutoff_nm, periodic)
        if omm_top.getNumAtoms() != md_top.n_atoms:
            raise HemeplmError(f"the force field system has {omm_top.getNumAtoms()} atoms but the topology "
                               f"has {md_top.n_atoms}", top_path)
        params = pair_parameters(system)
        box = traj.unitcell_vectors if periodic else None
        energy, forces = frame_labels(system, xyz, box, progress)
        inter = residue_interactions(params, xyz, residue, lig, len(names))
        arrays = {"time_ps": np.asarray(traj.time, dtype=np.float64), "energy_kcal_mol": energy,
                  "forces_kcal_mol_A": forces, "residue_interaction_kcal_mol": inter,
                  "residues": np.asarray(names), "ligand_atoms": lig}
        _write_labelled(d, traj, box, arrays, {
            "topology": str(top_path), "trajectory": str(traj_path), "level": "mm", "forcefield": forcefield,
            "solvent": solv, "cutoff_nm": cutoff_nm, "n_frames": int(traj.n_frames),
            "interaction_energy": "per protein residue with the ligand: Coulomb (332.0637 q_i q_j / r) + "
                                  "Lennard-Jones, all atoms, no cutoff, vacuum, kcal/mol"})
        log.info("%s: %d frames labelled", d, traj.n_frames)
    return dirs


def _gfn2_numbers(md_top, top_path: Path, charge: int, multiplicity: int, forcefield, solvent) -> np.ndarray:
    """Atomic numbers (A,) of a topology for GFN2-xTB labels, after checking the options fit them."""
    if forcefield:
        raise HemeplmError("--forcefield is for --level mm; GFN2-xTB needs no force field")
    if solvent not in (None, "vacuum"):
        raise HemeplmError(f"GFN2-xTB labels are computed in vacuum; --solvent {solvent} is for --level mm")
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in md_top.atoms])
    if (numbers <= 0).any():
        bad = next(a for a, z in zip(md_top.atoms, numbers) if z <= 0)
        raise HemeplmError(f"atom {bad} has no chemical element; GFN2-xTB needs every atom's element", top_path)
    if not (numbers == 1).any() and (numbers == 6).any():
        raise HemeplmError("the topology has no hydrogens; GFN2-xTB needs every atom", top_path)
    if numbers.max() > 86:
        raise HemeplmError("GFN2-xTB covers elements up to radon (Z = 86)", top_path)
    try:
        check_spin(numbers, charge, multiplicity)
    except HemeplmError as exc:
        raise HemeplmError(str(exc), top_path) from None
    return numbers


def _write_labelled(d: Path, traj, box, arrays: dict, meta: dict) -> None:
    """Write ``traj.dcd`` (full float32 precision), ``topology.pdb``, ``energies_forces.npz`` (``arrays``) and
    ``labels.json`` (``meta``) into ``d``, each file atomically."""
    import mdtraj

    d.mkdir(parents=True, exist_ok=True)
    with mdtraj.formats.DCDTrajectoryFile(str(d / ".traj.tmp.dcd"), "w", force_overwrite=True) as fh:
        fh.write(traj.xyz * 10.0, cell_lengths=None if box is None else traj.unitcell_lengths * 10.0,
                 cell_angles=None if box is None else traj.unitcell_angles)
    (d / ".traj.tmp.dcd").replace(d / "traj.dcd")
    traj[0].save_pdb(str(d / ".topology.tmp.pdb"))
    (d / ".topology.tmp.pdb").replace(d / "topology.pdb")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(d / ENERGY_FILE, buf.getvalue())
    atomic_write_bytes(d / "labels.json", json.dumps(meta, indent=2).encode())
