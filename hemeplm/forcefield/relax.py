"""Restrained OpenMM relaxation of generated frames, and Boltzmann weights from it.

Generated frames hold the heavy atoms of the training system (the PDB that
``sample.py`` writes beside its trajectories is their topology). The force
field is the training MD's own: an Amber prmtop (in OBC2 implicit solvent, as
``hemeplm simulate`` runs it, or in vacuum), or a PDB prepared as
``hemeplm simulate --pdb`` prepares it (:func:`hemeplm.forcefield.simulate.prepare_pdb`:
CHARMM36, a heme as ``HEME``; in vacuum, since explicit water means nothing
for a single frame). Without ``forcefield_topology`` the generated topology
PDB itself takes the CHARMM36 route. Both are built without constraints, so
bonds to hydrogen relax too (constrained MD holds them at their equilibrium
lengths, where their terms are zero, so the energies mean the same).

Generated atoms are matched to the force field's residue by residue, in
order, by residue name (``HIE`` = ``HIS``, ``HEM`` = ``HEME``) and atom name.
For every frame:

1. every force-field atom the frame lacks (hydrogens; a terminal oxygen
   PDBFixer adds) is put near its bonded neighbour at an idealised angle,
   then those atoms alone are minimised with the generated atoms held still.
   The force field's potential energy there is the frame's energy *before*;
2. the whole system is minimised with every generated heavy atom held by a
   harmonic restraint ``½ k |x − x₀|²`` to its generated position: first in
   a softened copy of the force field (:func:`_softened`: no implicit
   solvent, a small repulsive core on hydrogens that have none; step 1
   minimises in it too), which settles badly clashing frames, then in the
   force field itself, optionally followed by a short restrained Langevin MD
   and a second minimisation. The potential energy there, restraint
   excluded, is the energy *after*.

A frame that cannot be relaxed (non-finite coordinates, an OpenMM failure, a
non-finite result, two atoms left on top of each other) is listed with its
index and the reason, and left out of the relaxed trajectory; nothing fails
silently.

Outputs for ``out = OUT.xtc`` (or ``.dcd``), named like ``sample.py``'s
(:func:`hemeplm.generate.sampler.output_paths`; ``OUT_000.xtc``... for several input
trajectories): the relaxed frames of each input trajectory, heavy atoms in the
generated topology's order (so the raw topology PDB reads them too, and
``hemeplm evaluate`` compares them directly with the raw ones); ``OUT.pdb``,
their topology with the first relaxed frame; ``OUT.npz``, per relaxed frame
(K of them, in trajectory order): ``source_file`` and ``source_frame`` (K,)
int (which input frame it is), ``energy_before_kcal_mol`` and
``energy_after_kcal_mol`` (K,), ``rmsd_A`` (K,) heavy-atom RMSD between the
generated and the relaxed frame (no superposition: the restraint holds the
frame in place), ``max_displacement_A`` (K,), ``seconds`` (K,) wall time of
the frame, ``weights`` (K,) with ``reweight``, and per failed frame
``failed_file``, ``failed_frame`` and ``failed_reason``; and ``OUT.json``, the
summary (settings, counts, failures, energy and RMSD statistics, seconds per
frame, the weights' effective sample size).

**Boltzmann weights.** An importance weight for a Boltzmann target is
``p(x)/q(x) ∝ exp(−U(x)/kT) / q(x)``, with q the generator's density. That
density is not available (DDIM sampling followed by a structure projection
has no tractable likelihood), so the weights take q as uniform over the
relaxed frames, each frame standing for its local basin:
``w_i ∝ exp(−U_after,i / kT)``, normalised by log-sum-exp. Basin widths
(entropy) and the generator's preference for some basins are ignored, and the
energies of a few thousand atoms differ between frames by far more than kT,
so the weight usually sits on a few frames; the effective sample size
``ESS = 1 / Σ w_i²`` (between 1 and K) says how many. They say which generated
frames the force field prefers; they are not unbiased estimates.
"""

from __future__ import annotations

import copy
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError, require_file
from hemeplm.evaluate.stats import effective_sample_size
from hemeplm.data.parameters import KJ_PER_KCAL
from hemeplm.data.parameters import HEME_PDB_NAMES
from hemeplm.io import atomic_save, atomic_write_bytes
from hemeplm.io import check_outputs, output_paths
from hemeplm.forcefield import simulate
from hemeplm.data.residues import standard_name
from hemeplm.data.load import load_topology, load_trajectory
from hemeplm.forcefield.simulate import get_platform

BOLTZMANN_KCAL_MOL_K = 0.0019872043
AMBER_SUFFIXES = (".prmtop", ".parm7")
RESTRAINT_GROUP = 31  # OpenMM force group of the restraint; the force field's forces stay in the others
TOLERANCE_KJ_MOL_NM = 10.0  # minimiser convergence: largest force component (OpenMM's default)
POLAR_H_LJ = (0.04, 0.19)  # sigma nm, epsilon kJ/mol: CHARMM's polar hydrogen (Rmin/2 0.2245 Å, 0.046 kcal/mol)
OVERLAP_NM = 0.05  # two atoms this close after relaxation (bonded atoms are 0.1 nm apart or more) fail the frame


@dataclass
class RelaxConfig:
    """Settings of a relaxation (recorded in the summary).

    Attributes:
        restraint_kcal_mol_A2: k of the restraint ``½ k |x − x₀|²`` on every generated heavy atom.
        max_iterations: L-BFGS iterations per minimisation (0: until converged).
        md_steps: restrained Langevin MD steps after the first minimisation (then minimised again); 0: none.
        md_timestep_fs: their time step (no constraints: keep it at 1-2 fs).
        solvent: ``implicit`` (OBC2; prmtop only) or ``vacuum``; None: implicit for a prmtop, vacuum for a PDB.
        temperature_k: of the MD and of kT in the weights.
        reweight: compute Boltzmann weights.
        platform: OpenMM platform (``CUDA``, ``OpenCL``, ``CPU``); None: the fastest available.
        seed: MD velocities and thermostat noise.
    """

    restraint_kcal_mol_A2: float = 10.0
    max_iterations: int = 1000
    md_steps: int = 0
    md_timestep_fs: float = 1.0
    solvent: str | None = None
    temperature_k: float = 300.0
    reweight: bool = False
    platform: str | None = None
    seed: int = 0



def relaxed_path(out: str | Path) -> Path:
    """Where ``sample.py --relax`` puts the relaxation of ``OUT.xtc``: ``OUT.relaxed.xtc``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.relaxed{out.suffix}")


def output_files(out: str | Path, n_trajectories: int, force: bool = False) -> tuple[list[Path], Path, Path, Path]:
    """Relaxed trajectories, topology PDB, summary JSON and per-frame npz for ``out``.

    Raises:
        HemeplmError: when ``out`` is not an .xtc/.dcd path, or (without ``force``) any of them exists.
    """

    out = Path(out)
    if out.suffix.lower() not in (".xtc", ".dcd"):
        raise HemeplmError("output must end in .xtc or .dcd", out)
    trajs, pdb, summary = output_paths(out, n_trajectories)
    arrays = summary.with_suffix(".npz")
    check_outputs([*trajs, pdb, summary, arrays], force, out)
    return trajs, pdb, summary, arrays


def forcefield_system(forcefield_topology: str | Path, solvent: str | None):
    """(OpenMM topology, system without constraints, description) of the training force field.

    A ``.prmtop``/``.parm7`` is read by :func:`hemeplm.forcefield.simulate.amber_system`; anything else goes
    through :func:`hemeplm.forcefield.simulate.prepare_pdb` (PDBFixer, CHARMM36, hydrogens at pH 7).
    """

    path = Path(forcefield_topology)
    amber = path.name.lower().endswith(AMBER_SUFFIXES)
    if solvent not in (None, "implicit", "vacuum"):
        raise HemeplmError(f"solvent {solvent!r} is not available for a relaxation; use 'implicit' or 'vacuum'")
    cfg = simulate.SimulateConfig(solvent=solvent or ("implicit" if amber else "vacuum"))
    if amber:
        topology, system = simulate.amber_system(path, cfg, constraints=False)
    else:
        topology, system, _ = simulate.prepare_pdb(path, cfg, constraints=False)
    return topology, system, {"kind": "amber" if amber else "charmm36", "file": str(path), "solvent": cfg.solvent,
                              "atoms": topology.getNumAtoms()}


def _residue_key(name: str) -> str:
    return "HEME" if name.upper() in HEME_PDB_NAMES else standard_name(name)


def match_atoms(generated, ff_topology, generated_path, ff_path) -> np.ndarray:
    """(A,) index in ``ff_topology`` (OpenMM) of each atom of ``generated`` (mdtraj topology).

    Residues are paired in order and must have the same name (:func:`_residue_key`); atoms are
    paired by name within them.

    Raises:
        HemeplmError: naming ``generated_path``, for the first residue or atom without a counterpart.
    """
    gen_res, ff_res = list(generated.residues), list(ff_topology.residues())
    if len(gen_res) != len(ff_res):
        missing = sorted({_residue_key(r.name) for r in gen_res} - {_residue_key(r.name) for r in ff_res})
        why = f"; {', '.join(missing)} cannot be parameterised there" if missing else ""
        raise HemeplmError(f"has {len(gen_res)} residues but the force field from {ff_path} has {len(ff_res)}{why}"
                           + ("; give the training MD's Amber prmtop with --forcefield-topology" if missing else ""),
                           generated_path)
    index = np.empty(generated.n_atoms, dtype=np.int64)
    for g, f in zip(gen_res, ff_res):
        if _residue_key(g.name) != _residue_key(f.name):
            raise HemeplmError(f"residue {g.index} is {g.name}{g.resSeq} but {f.name}{f.id} in {ff_path}",
                               generated_path)
        by_name = {a.name: a.index for a in f.atoms()}
        for a in g.atoms:
            if a.name not in by_name:
                raise HemeplmError(f"atom {a.name} of {g.name}{g.resSeq} has no counterpart in {f.name}{f.id} of "
                                   f"{ff_path} (atoms {' '.join(sorted(by_name))})", generated_path)
            index[a.index] = by_name[a.name]
    return index


def placement_plan(ff_topology, known: np.ndarray, ff_path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The order in which to place the force-field atoms that are not ``known`` ((N,) bool).

    Returns:
        groups ``(parent, children, anchors)``: a placed atom, the unplaced atoms bonded to it, and its
        placed neighbours at that point; a group's atoms are placed once the groups before it are.
    Raises:
        HemeplmError: naming ``ff_path``, when some atoms are bonded to nothing placeable (e.g. water).
    """
    atoms = list(ff_topology.atoms())
    neighbours = [[] for _ in atoms]
    for a, b in ff_topology.bonds():
        neighbours[a.index].append(b.index)
        neighbours[b.index].append(a.index)
    known = known.copy()
    plan = []
    while not known.all():
        groups: dict[int, list[int]] = {}
        for a in np.flatnonzero(~known):
            parent = next((b for b in neighbours[a] if known[b]), None)
            if parent is not None:
                groups.setdefault(parent, []).append(int(a))
        if not groups:
            lost = np.flatnonzero(~known)
            first = atoms[lost[0]]
            raise HemeplmError(f"{len(lost)} of its atoms are bonded to no generated atom and cannot be placed, "
                               f"e.g. {first.name} of {first.residue.name}{first.residue.id}", ff_path)
        for parent, children in groups.items():
            plan.append((parent, np.array(children), np.array([b for b in neighbours[parent] if known[b]])))
        for children in groups.values():
            known[children] = True
    return plan


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _perpendicular(u: np.ndarray) -> np.ndarray:
    """(F, 3) unit vectors perpendicular to (F, 3) ``u``."""
    axis = np.eye(3)[np.argmin(np.abs(u), axis=-1)]
    return _unit(np.cross(u, axis))


def place_atoms(xyz: np.ndarray, plan: list, hydrogen: np.ndarray) -> None:
    """Put the atoms of ``plan`` (:func:`placement_plan`) into (F, N, 3) ``xyz`` (nm), in place.

    The children of a parent go at 0.10 nm (hydrogen; ``hydrogen`` (N,) bool) or 0.14 nm, pointing
    away from its placed neighbours: one child with two or more neighbours along the bisector, else on
    a cone at the tetrahedral angle (120° for two children on a one-neighbour parent), spread evenly
    around it; two children on a two-neighbour parent straddle the neighbours' plane. The minimisation
    of the placed atoms that follows does the rest.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        for parent, children, anchors in plan:
            p = xyz[:, parent]                                                    # (F, 3)
            k, m = len(anchors), len(children)
            v = _unit(xyz[:, anchors] - p[:, None]) if k else np.zeros((len(p), 0, 3))
            u = -v.sum(1) if k else np.broadcast_to([0.0, 0.0, 1.0], p.shape).copy()
            flat = ~(np.linalg.norm(u, axis=-1) > 1e-6)
            u[flat] = _perpendicular(v[flat, 0]) if k else u[flat]
            u = _unit(u)
            ref = np.cross(v[:, 0], v[:, 1]) if k >= 2 else _perpendicular(u)
            ref -= (ref * u).sum(-1, keepdims=True) * u
            bad = ~(np.linalg.norm(ref, axis=-1) > 1e-6)
            ref[bad] = _perpendicular(u[bad])
            ref = _unit(ref)
            side = np.cross(u, ref)
            theta = np.radians(0.0 if m == 1 and k >= 2 else 54.75 if (k, m) == (2, 2) else
                               60.0 if (k, m) == (1, 2) else 70.53)
            for j, c in enumerate(children):
                phi = 2 * np.pi * j / m
                d = np.cos(theta) * u + np.sin(theta) * (np.cos(phi) * ref + np.sin(phi) * side)
                xyz[:, c] = p + (0.10 if hydrogen[c] else 0.14) * d


def _restraint(system, restrained: np.ndarray, k_kcal_mol_A2: float):
    """Add ``½ k |x − x₀|²`` on the ``restrained`` atoms to ``system`` in :data:`RESTRAINT_GROUP`; return it."""
    import openmm

    force = openmm.CustomExternalForce("0.5*k_restraint*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    force.addGlobalParameter("k_restraint", k_kcal_mol_A2 * KJ_PER_KCAL * 100.0)
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    for i in restrained:
        force.addParticle(int(i), [0.0, 0.0, 0.0])
    force.setForceGroup(RESTRAINT_GROUP)
    system.addForce(force)
    return force


def _softened(system, hydrogen: np.ndarray):
    """A copy of ``system`` without implicit solvent and with :data:`POLAR_H_LJ` on hydrogens that have no
    Lennard-Jones term (Amber's polar hydrogens).

    Generalised-Born radii of overlapping atoms stall or break the minimiser, and a hydrogen without
    Lennard-Jones repulsion can fall onto the charged atom a clashing frame puts next to it; this copy
    settles such frames before the real force field takes over.
    """
    import openmm

    soft = copy.deepcopy(system)
    for k in reversed(range(soft.getNumForces())):
        force = soft.getForce(k)
        if isinstance(force, (openmm.GBSAOBCForce, openmm.CustomGBForce)):
            soft.removeForce(k)
        elif isinstance(force, openmm.NonbondedForce):
            for i in np.flatnonzero(hydrogen):
                charge, sigma, epsilon = force.getParticleParameters(int(i))
                if epsilon._value == 0.0:
                    force.setParticleParameters(int(i), charge, *POLAR_H_LJ)
    return soft


class Relaxer:
    """OpenMM contexts over one force field: ``placer`` settles the placed atoms with the generated atoms
    massless (the minimiser leaves them where they are), then the restrained minimisation runs in two
    ``stages``: in the :func:`_softened` force field, then in the force field itself.

    Args:
        system: OpenMM System without constraints (taken over: the restraint is added to it).
        generated: (A,) force-field indices of the generated atoms; restrained: (H,) those of its heavy atoms.
        hydrogen: (N,) bool, the force field's hydrogens.
        cfg: settings.
    """

    def __init__(self, system, generated: np.ndarray, restrained: np.ndarray, hydrogen: np.ndarray,
                 cfg: RelaxConfig):
        import openmm
        from openmm import unit

        self.cfg, self.restrained = cfg, restrained
        soft = _softened(system, hydrogen)
        fixed = copy.deepcopy(soft)
        for i in generated:
            fixed.setParticleMass(int(i), 0.0)
        restraints = [_restraint(s, restrained, cfg.restraint_kcal_mol_A2) for s in (soft, system)]
        platform = get_platform(cfg.platform)
        self.integrator = openmm.LangevinMiddleIntegrator(cfg.temperature_k * unit.kelvin, 1.0 / unit.picosecond,
                                                          cfg.md_timestep_fs * unit.femtosecond)
        self.integrator.setRandomNumberSeed(cfg.seed)
        self.placer = openmm.Context(fixed, openmm.VerletIntegrator(0.001), platform)
        self.stages = [(openmm.Context(soft, openmm.VerletIntegrator(0.001), platform), restraints[0]),
                       (openmm.Context(system, self.integrator, platform), restraints[1])]

    @staticmethod
    def _read(context) -> tuple[np.ndarray, float]:
        """Positions (N, 3) nm and potential energy (kcal/mol) without the restraint."""
        from openmm import unit

        state = context.getState(getPositions=True, getEnergy=True, groups=set(range(32)) - {RESTRAINT_GROUP})
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_KCAL
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)), energy

    def _minimise(self, context) -> tuple[np.ndarray, float]:
        import openmm

        openmm.LocalEnergyMinimizer.minimize(context, TOLERANCE_KJ_MOL_NM, self.cfg.max_iterations)
        return self._read(context)

    def __call__(self, xyz: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
        """Relax one frame.

        Args:
            xyz: (N, 3) nm, every force-field atom (placed ones from :func:`place_atoms`).
            seed: MD velocities.
        Returns:
            relaxed (N, 3) nm, energy before and after (kcal/mol, the force field without the restraint).
        """
        from openmm import unit

        cfg = self.cfg
        self.placer.setPositions(xyz)
        relaxed, _ = self._minimise(self.placer)
        context = self.stages[-1][0]
        context.setPositions(relaxed)
        _, before = self._read(context)
        anchors = relaxed[self.restrained].tolist()
        for context, restraint in self.stages:
            for k, i in enumerate(self.restrained):
                restraint.setParticleParameters(k, int(i), anchors[k])
            restraint.updateParametersInContext(context)
            context.setPositions(relaxed)
            relaxed, after = self._minimise(context)
        if cfg.md_steps:
            context.setVelocitiesToTemperature(cfg.temperature_k * unit.kelvin, seed)
            self.integrator.step(cfg.md_steps)
            relaxed, after = self._minimise(context)
        return relaxed, before, after


def boltzmann_weights(energy_kcal_mol: np.ndarray, temperature_k: float) -> tuple[np.ndarray, float]:
    """Normalised weights ``w_i ∝ exp(−U_i / kT)`` of (K,) finite energies (kcal/mol), and their ESS.

    Computed in log space with the largest log-weight subtracted (log-sum-exp), so they are finite
    and sum to 1 whatever the energies' scale. ESS = 1 / Σ w_i², between 1 and K.
    """
    energy = np.asarray(energy_kcal_mol, dtype=np.float64)
    if energy.size == 0 or not np.isfinite(energy).all():
        raise HemeplmError("Boltzmann weights need at least one energy, all finite")
    log_w = -energy / (BOLTZMANN_KCAL_MOL_K * temperature_k)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    return w, effective_sample_size(w)


def load_weights(path: str | Path) -> np.ndarray:
    """The Boltzmann weights that ``hemeplm relax --reweight`` wrote into ``OUT.npz``.

    Returns:
        (K,) float64, non-negative, summing to 1: one per frame of the relaxed trajectories listed in
        ``OUT.json``'s ``trajectories``, concatenated in that order (the frames ``hemeplm evaluate
        --generated OUT_000.xtc OUT_001.xtc ...`` reads).
    Raises:
        HemeplmError: naming ``path``, when it is not such a file or its weights are not finite,
        negative, or do not sum to 1.
    """
    p = require_file(path)
    try:
        z = np.load(p)
    except (OSError, ValueError) as exc:
        raise HemeplmError(f"cannot read as an npz file: {exc}", p) from exc
    if not isinstance(z, np.lib.npyio.NpzFile) or "weights" not in z.files:
        raise HemeplmError("holds no weights; relax with --reweight", p)
    with z:
        w = np.asarray(z["weights"], dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any() or abs(w.sum() - 1.0) > 1e-6:
        raise HemeplmError("its weights are not a finite, non-negative vector summing to 1", p)
    return w


def _fault(xyz: np.ndarray, energy: float, atoms: list) -> str | None:
    """Why a relaxed frame ((N, 3) nm, energy kcal/mol; ``atoms`` the OpenMM atoms) is unusable, or None."""
    from scipy.spatial import cKDTree

    if not (np.isfinite(energy) and np.isfinite(xyz).all()):
        return f"relaxation gave a non-finite result (energy {energy} kcal/mol)"
    pairs = cKDTree(xyz).query_pairs(OVERLAP_NM, output_type="ndarray")
    if len(pairs):
        a, b = (atoms[int(i)] for i in pairs[0])
        return (f"{len(pairs)} atom pair(s) still overlap after relaxation, e.g. {a.residue.name}{a.residue.id} "
                f"{a.name} and {b.residue.name}{b.residue.id} {b.name} "
                f"({np.linalg.norm(xyz[a.index] - xyz[b.index]) * 10:.2f} A apart)")
    return None


def _stats(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


def relax_trajectories(topology: str | Path, frames: list[str | Path], out: str | Path,
                       forcefield_topology: str | Path | None = None, cfg: RelaxConfig | None = None,
                       force: bool = False, progress: bool = True) -> dict:
    """Relax every frame of the generated trajectories ``frames`` (topology ``topology``, heavy atoms).

    Args:
        topology: PDB (or any topology mdtraj reads) of the generated frames.
        frames: trajectory files, relaxed in order.
        out: ``OUT.xtc`` or ``OUT.dcd``; see the module docstring for what is written.
        forcefield_topology: Amber prmtop or PDB (see :func:`forcefield_system`); None: ``topology`` (PDB).
        cfg: settings; force: overwrite existing outputs; progress: a progress bar.
    Returns:
        the summary written to ``OUT.json``.
    Raises:
        HemeplmError: naming the file, for unreadable or mismatched inputs, existing outputs, or an
        input trajectory none of whose frames could be relaxed.
    """
    import mdtraj
    import openmm
    from tqdm import tqdm

    cfg = cfg or RelaxConfig()
    if not frames:
        raise HemeplmError("no trajectory to relax")
    trajs_out, pdb_out, json_out, npz_out = output_files(out, len(frames), force)
    t_start = time.perf_counter()
    top_path = Path(topology)
    gen_top = load_topology(top_path)
    raw = [load_trajectory(f, gen_top, top_path, check_frames=False) for f in frames]
    ff_path = Path(forcefield_topology or topology)
    ff_top, system, ff_info = forcefield_system(ff_path, cfg.solvent)
    index = match_atoms(gen_top, ff_top, top_path, ff_path)
    known = np.zeros(ff_top.getNumAtoms(), dtype=bool)
    known[index] = True
    plan = placement_plan(ff_top, known, ff_path)
    ff_atoms = list(ff_top.atoms())
    hydrogen = np.array([a.element is not None and a.element.symbol == "H" for a in ff_atoms])
    heavy = np.array([a.element is None or a.element.symbol != "H" for a in gen_top.atoms])
    relax = Relaxer(system, index, index[heavy], hydrogen, cfg)
    setup = time.perf_counter() - t_start

    rows, failed, relaxed, done = [], [], [[] for _ in raw], 0
    bar = tqdm(total=sum(t.n_frames for t in raw), unit="frame", desc="relax", disable=not progress)
    for f, traj in enumerate(raw):
        full = np.zeros((traj.n_frames, ff_top.getNumAtoms(), 3))
        full[:, index] = traj.xyz
        place_atoms(full, plan, hydrogen)
        for i in range(traj.n_frames):
            t0 = time.perf_counter()
            x = traj.xyz[i].astype(np.float64)
            reason = None
            if not np.isfinite(x).all():
                reason = f"non-finite coordinates ({int((~np.isfinite(x).all(1)).sum())} atoms)"
            else:
                try:
                    pos, before, after = relax(full[i], seed=cfg.seed + done)
                except openmm.OpenMMException as exc:
                    reason = f"OpenMM failed: {' '.join(str(exc).split())}"
                else:
                    reason = _fault(pos, after, ff_atoms)
            if reason is None:
                moved = np.linalg.norm(pos[index[heavy]] - x[heavy], axis=-1) * 10.0
                relaxed[f].append(pos[index])
                rows.append((f, i, before, after, float(np.sqrt(np.mean(moved ** 2))), float(moved.max()),
                             time.perf_counter() - t0))
            else:
                failed.append({"file": str(frames[f]), "file_index": f, "frame": i, "reason": reason})
            done += 1
            bar.update(1)
    bar.close()
    for f, traj in enumerate(raw):
        if not relaxed[f]:
            reasons = "; ".join(f"frame {r['frame']}: {r['reason']}" for r in failed if r["file_index"] == f)
            raise HemeplmError(f"no frame could be relaxed ({reasons})", frames[f])

    cols = list(zip(*rows))
    source_file, source_frame = np.array(cols[0]), np.array(cols[1])
    before, after, rmsd, moved, seconds = (np.array(c, dtype=np.float64) for c in cols[2:])
    arrays = {"source_file": source_file, "source_frame": source_frame, "energy_before_kcal_mol": before,
              "energy_after_kcal_mol": after, "rmsd_A": rmsd, "max_displacement_A": moved, "seconds": seconds,
              "failed_file": np.array([r["file_index"] for r in failed], dtype=np.int64),
              "failed_frame": np.array([r["frame"] for r in failed], dtype=np.int64),
              "failed_reason": np.array([r["reason"] for r in failed], dtype=str)}
    reweight = None
    if cfg.reweight:
        arrays["weights"], ess = boltzmann_weights(after, cfg.temperature_k)
        reweight = {"temperature_k": cfg.temperature_k, "kT_kcal_mol": BOLTZMANN_KCAL_MOL_K * cfg.temperature_k,
                    "ess": ess, "ess_fraction": ess / len(after), "max_weight": float(arrays["weights"].max()),
                    "weights": str(npz_out),
                    "proposal": "uniform over the relaxed frames (the generator's density is not available): "
                                "w_i ~ exp(-U_after,i/kT), normalised by log-sum-exp; basin widths ignored"}

    for f, traj in enumerate(raw):
        keep = source_frame[source_file == f]
        atomic_save(mdtraj.Trajectory(np.stack(relaxed[f]).astype(np.float32), gen_top, time=traj.time[keep]),
                     trajs_out[f])
    atomic_save(mdtraj.Trajectory(relaxed[0][0][None].astype(np.float32), gen_top), pdb_out)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(npz_out, buf.getvalue())
    summary = {
        "topology": str(topology), "frames": [str(f) for f in frames], "forcefield": ff_info,
        "config": asdict(cfg), "placed_atoms": int((~known).sum()), "restrained_atoms": int(heavy.sum()),
        "trajectories": [str(p) for p in trajs_out], "topology_pdb": str(pdb_out), "arrays": str(npz_out),
        "frames_total": int(sum(t.n_frames for t in raw)), "frames_relaxed": len(rows), "failed": failed,
        "energy_before_kcal_mol": _stats(before), "energy_after_kcal_mol": _stats(after),
        "rmsd_A": _stats(rmsd), "max_displacement_A": _stats(moved),
        "seconds_per_frame": float(seconds.mean()), "setup_seconds": round(setup, 3),
        "wall_seconds": round(time.perf_counter() - t_start, 3), "reweight": reweight,
        "units": {"energy": "kcal/mol", "distance": "A", "restraint": "kcal/mol/A^2", "trajectories": "nm"},
    }
    atomic_write_bytes(json_out, (json.dumps(summary, indent=2) + "\n").encode())
    return summary
