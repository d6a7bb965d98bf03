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
trajectory through OpenMM: for every frame the potential energy, all-atom forces
and these interaction energies, written with the frames (DCD, full float32
precision) into one directory per trajectory, where the data loader finds them.
The labels are computed at exactly the coordinates written, so inputs and labels
agree whatever precision the original file had.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.load import ENERGY_FILE
from .errors import HemeplmError, require_file

log = logging.getLogger(__name__)

COULOMB_KCAL_A = 332.0637  # kcal/mol Å e⁻²: OpenMM's 138.935456 kJ/mol nm e⁻² in these units
KJ_PER_KCAL = 4.184


@dataclass
class PairParameters:
    """Per-atom non-bonded parameters of an OpenMM system, in Å, kcal/mol and e.

    Attributes (A atoms):
        charge: (A,) partial charges.
        sigma, epsilon: (A,) Lennard-Jones parameters of ``NonbondedForce`` (Lorentz–Berthelot).
        lj_type: (A,) index into ``acoef``/``bcoef`` tables, or None without tables.
        acoef, bcoef: (K, K) tables, E = acoef/r¹² − bcoef/r⁶ (kcal/mol Å¹², kcal/mol Å⁶), or None.
        exceptions: {(i, j): (charge product, sigma, epsilon)} with i < j.
        excluded: set of (i, j), i < j, pairs the tabulated force skips.
    """

    charge: np.ndarray
    sigma: np.ndarray
    epsilon: np.ndarray
    lj_type: np.ndarray | None
    acoef: np.ndarray | None
    bcoef: np.ndarray | None
    exceptions: dict
    excluded: set

    def pair_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Coulomb + Lennard-Jones energy (kcal/mol) of atom pairs ``i``, ``j`` (broadcastable) at distance ``r`` Å."""
        return self.lb_energy(i, j, r) + self.table_energy(i, j, r)

    def lb_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The Coulomb + Lorentz–Berthelot Lennard-Jones part of :meth:`pair_energy` (what an exception replaces)."""
        return coulomb_lj(self.charge[i] * self.charge[j], 0.5 * (self.sigma[i] + self.sigma[j]),
                          np.sqrt(self.epsilon[i] * self.epsilon[j]), r)

    def table_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The ``acoef/bcoef`` table part of :meth:`pair_energy` (NBFIX; 0 without tables)."""
        if self.acoef is None:
            return np.zeros(np.shape(r))
        r6 = r ** -6
        ti, tj = self.lj_type[i], self.lj_type[j]
        return self.acoef[ti, tj] * r6 * r6 - self.bcoef[ti, tj] * r6


def coulomb_lj(qq, sigma, epsilon, r):
    """Vacuum Coulomb + 4ε((σ/r)¹² − (σ/r)⁶) in kcal/mol: charge products (e²), σ and r (Å), ε (kcal/mol);
    numpy arrays, torch tensors or floats of one shape (broadcastable)."""
    s6 = (sigma / r) ** 6
    return COULOMB_KCAL_A * qq / r + 4.0 * epsilon * (s6 * s6 - s6)


def pair_parameters(system) -> PairParameters:
    """Read :class:`PairParameters` from an OpenMM ``System``.

    Raises HemeplmError for custom non-bonded forms other than ``acoef/bcoef`` tables,
    whose pair energies this module cannot evaluate.
    """
    import openmm
    from openmm import unit

    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(nb) != 1:
        raise HemeplmError(f"the force field has {len(nb)} NonbondedForce terms; interaction energies need one")
    nb = nb[0]
    n = system.getNumParticles()
    q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        qi, si, ei = nb.getParticleParameters(i)
        q[i] = qi.value_in_unit(unit.elementary_charge)
        sig[i] = si.value_in_unit(unit.angstrom)
        eps[i] = ei.value_in_unit(unit.kilocalorie_per_mole)
    exceptions = {}
    for k in range(nb.getNumExceptions()):
        i, j, qq, s, e = nb.getExceptionParameters(k)
        exceptions[(min(i, j), max(i, j))] = (qq.value_in_unit(unit.elementary_charge ** 2),
                                              s.value_in_unit(unit.angstrom), e.value_in_unit(unit.kilocalorie_per_mole))
    lj_type = acoef = bcoef = None
    excluded: set = set()
    for f in system.getForces():
        if not isinstance(f, openmm.CustomNonbondedForce):
            continue
        names = [f.getTabulatedFunctionName(k) for k in range(f.getNumTabulatedFunctions())]
        if not {"acoef", "bcoef"} <= set(names) or f.getNumPerParticleParameters() != 1:
            raise HemeplmError(f"the force field has a custom non-bonded term ({f.getEnergyFunction()!r}) "
                               "whose pair energies cannot be evaluated here")
        tables = {}
        for name in ("acoef", "bcoef"):
            kx, ky, values = f.getTabulatedFunction(names.index(name)).getFunctionParameters()
            tables[name] = np.asarray(values).reshape(ky, kx).T
        # OpenMM tables are in kJ/mol nm^12 and kJ/mol nm^6
        acoef = tables["acoef"] * 1e12 / KJ_PER_KCAL
        bcoef = tables["bcoef"] * 1e6 / KJ_PER_KCAL
        lj_type = np.array([int(round(f.getParticleParameters(i)[0])) for i in range(n)])
        excluded = {(min(a, b), max(a, b)) for a, b in (f.getExclusionParticles(k) for k in range(f.getNumExclusions()))}
    return PairParameters(q, sig, eps, lj_type, acoef, bcoef, exceptions, excluded)


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


def residue_labels(topology) -> tuple[np.ndarray, list[str]]:
    """(A,) protein residue index per atom (-1 elsewhere) and the residue names (``ALA99``) of an mdtraj Topology."""
    index = -np.ones(topology.n_atoms, dtype=np.int64)
    names = []
    for res in topology.residues:
        if not res.is_protein:
            continue
        for a in res.atoms:
            index[a.index] = len(names)
        names.append(f"{res.name}{res.resSeq}")
    return index, names


def openmm_system(topology: str | Path, forcefield: list[str] | None = None, solvent: str = "vacuum",
                  cutoff_nm: float = 1.2, periodic: bool = False):
    """An OpenMM (Topology, System) for an all-atom topology file.

    Args:
        topology: Amber ``.prmtop``/``.parm7``; CHARMM ``.psf`` (``forcefield``: its parameter
            files, .prm/.rtf/.str); GROMACS ``.top`` (``forcefield``: the .gro for box and
            include directory is the file's folder); or PDB (``forcefield``: OpenMM XML files,
            default CHARMM36 with its HEME template, the route of ``hemeplm simulate``).
        solvent: ``implicit`` (OBC2; prmtop only), ``vacuum`` or ``explicit`` (PME, needs ``periodic``).
        cutoff_nm: non-bonded cutoff of implicit/explicit solvent (vacuum uses none).
        periodic: the trajectory has a box.
    Returns:
        (openmm.app.Topology, openmm.System) with constraints on bonds to hydrogen, as
        ``hemeplm simulate`` runs (their forces are not part of the force labels).
    """
    from openmm import app, unit

    path = require_file(topology)
    name = path.name.lower()
    if solvent not in ("implicit", "vacuum", "explicit"):
        raise HemeplmError(f"solvent must be implicit, vacuum or explicit, got {solvent!r}")
    if solvent == "explicit" or periodic:
        method = app.PME if solvent == "explicit" else app.CutoffPeriodic
    else:
        method = app.NoCutoff if solvent == "vacuum" else app.CutoffNonPeriodic
    kwargs = {"nonbondedMethod": method, "constraints": app.HBonds}
    if method is not app.NoCutoff:
        kwargs["nonbondedCutoff"] = cutoff_nm * unit.nanometer
    if solvent == "implicit" and not name.endswith((".prmtop", ".parm7")):
        raise HemeplmError("implicit solvent (OBC2) labels need an Amber prmtop; use --solvent vacuum", path)
    try:
        if name.endswith((".prmtop", ".parm7")):
            top = app.AmberPrmtopFile(str(path))
            if solvent == "implicit":
                kwargs["implicitSolvent"] = app.OBC2
            return top.topology, top.createSystem(**kwargs)
        if name.endswith(".psf"):
            if not forcefield:
                raise HemeplmError("a PSF needs its CHARMM parameter files (--forcefield X.prm Y.rtf ...)", path)
            psf = app.CharmmPsfFile(str(path))
            return psf.topology, psf.createSystem(app.CharmmParameterSet(*forcefield), **kwargs)
        if name.endswith(".top"):
            gro = [f for f in forcefield or [] if f.lower().endswith(".gro")]
            box = app.GromacsGroFile(gro[0]).getPeriodicBoxVectors() if gro else None
            top = app.GromacsTopFile(str(path), periodicBoxVectors=box, includeDir=str(path.parent))
            return top.topology, top.createSystem(**kwargs)
        if name.endswith((".pdb", ".pdb.gz", ".ent")):
            return _pdb_system(path, forcefield or ["charmm36.xml"], solvent, kwargs)
    except HemeplmError:
        raise
    except Exception as exc:
        raise HemeplmError(f"cannot build a force-field system: {' '.join(str(exc).split())}", path) from exc
    raise HemeplmError("energy labels need an Amber prmtop, a CHARMM PSF, a GROMACS top or an all-atom PDB", path)


def _pdb_system(path: Path, forcefield: list[str], solvent: str, kwargs: dict):
    """All-atom PDB + OpenMM XML force field (hemes renamed to CHARMM's HEME as ``hemeplm simulate`` does)."""
    from openmm import app

    from .simulate import _prepare_heme

    pdb = app.PDBFile(str(path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    _prepare_heme(modeller)
    if not any(a.element is not None and a.element.symbol == "H" for a in modeller.topology.atoms()):
        raise HemeplmError("has no hydrogens; energy labels need the all-atom topology of the MD", path)
    files = list(forcefield)
    if any(r.name == "HOH" for r in modeller.topology.residues()) and "charmm36/water.xml" not in files:
        files.append("charmm36/water.xml")
    return modeller.topology, app.ForceField(*files).createSystem(modeller.topology, **kwargs)


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


def label_trajectories(topology: str | Path, trajectories: list[str | Path], out: str | Path,
                       forcefield: list[str] | None = None, solvent: str | None = None, cutoff_nm: float = 1.2,
                       ligand: str | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Rerun trajectories through OpenMM and write their labels (what ``hemeplm label`` does).

    Each trajectory ``X.ext`` gets ``out/X/`` with ``traj.dcd`` (the frames as read),
    ``topology.pdb`` and ``energies_forces.npz``: ``time_ps`` (F,), ``energy_kcal_mol`` (F,),
    ``forces_kcal_mol_A`` (F, A, 3), ``residue_interaction_kcal_mol`` (F, R), ``residues`` (R,)
    and ``ligand_atoms`` (L,). ``solvent`` None: implicit (OBC2) for a prmtop, vacuum otherwise,
    explicit when the frames have a box. Returns the directories written.
    """
    import mdtraj

    from .data.load import load_topology, load_trajectory, select_ligand
    from .simulate import atomic_write_bytes

    top_path = require_file(topology)
    if not trajectories:
        raise HemeplmError("give the trajectory files to label")
    md_top = load_topology(top_path)
    out = Path(out)
    stems = [Path(t).name.split(".")[0] for t in trajectories]
    if len(set(stems)) != len(stems):
        raise HemeplmError(f"trajectory file names must differ (they name the output folders): {stems}")
    dirs = [out / s for s in stems]
    for d in dirs:
        if (d / ENERGY_FILE).exists() and not force:
            raise HemeplmError("already holds labels; pass --force to overwrite them", d)
    lig = select_ligand(md_top, ligand, top_path)
    if not len(lig):
        log.warning("%s: no ligand: only energies and forces are labelled", top_path)
    residue, names = residue_labels(md_top)
    for traj_path, d in zip(trajectories, dirs):
        traj = load_trajectory(traj_path, md_top, top_path)
        periodic = traj.unitcell_vectors is not None and solvent != "vacuum"
        solv = solvent or ("explicit" if periodic else "implicit" if top_path.name.lower().endswith(
            (".prmtop", ".parm7")) else "vacuum")
        omm_top, system = openmm_system(top_path, forcefield, solv, cutoff_nm, periodic)
        if omm_top.getNumAtoms() != md_top.n_atoms:
            raise HemeplmError(f"the force field system has {omm_top.getNumAtoms()} atoms but the topology "
                               f"has {md_top.n_atoms}", top_path)
        xyz = traj.xyz.astype(np.float64) * 10.0
        params = pair_parameters(system)
        box = traj.unitcell_vectors if periodic else None
        energy, forces = frame_labels(system, xyz, box, progress)
        inter = residue_interactions(params, xyz, residue, lig, len(names))
        d.mkdir(parents=True, exist_ok=True)
        with mdtraj.formats.DCDTrajectoryFile(str(d / ".traj.tmp.dcd"), "w", force_overwrite=True) as fh:
            fh.write(traj.xyz * 10.0, cell_lengths=None if box is None else traj.unitcell_lengths * 10.0,
                     cell_angles=None if box is None else traj.unitcell_angles)
        (d / ".traj.tmp.dcd").replace(d / "traj.dcd")
        traj[0].save_pdb(str(d / ".topology.tmp.pdb"))
        (d / ".topology.tmp.pdb").replace(d / "topology.pdb")
        buf = io.BytesIO()
        np.savez_compressed(buf, time_ps=np.asarray(traj.time, dtype=np.float64), energy_kcal_mol=energy,
                            forces_kcal_mol_A=forces, residue_interaction_kcal_mol=inter,
                            residues=np.asarray(names), ligand_atoms=lig)
        atomic_write_bytes(d / ENERGY_FILE, buf.getvalue())
        atomic_write_bytes(d / "labels.json", json.dumps({
            "topology": str(top_path), "trajectory": str(traj_path), "forcefield": forcefield,
            "solvent": solv, "cutoff_nm": cutoff_nm, "n_frames": int(traj.n_frames),
            "interaction_energy": "per protein residue with the ligand: Coulomb (332.0637 q_i q_j / r) + "
                                  "Lennard-Jones, all atoms, no cutoff, vacuum, kcal/mol"}, indent=2).encode())
        log.info("%s: %d frames labelled", d, traj.n_frames)
    return dirs

