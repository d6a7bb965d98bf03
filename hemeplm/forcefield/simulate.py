"""OpenMM molecular dynamics that produces training data.

Two ways in:

* an Amber ``prmtop`` + ``inpcrd`` pair, run in implicit solvent (OBC2);
* a PDB file (e.g. a downloaded 3CQV), cleaned by PDBFixer and parameterised
  with CHARMM36. A heme (``HEM``) is renamed to CHARMM's ``HEME``, given the
  template's bonds and hydrogens, and simulated in explicit TIP3P water or in
  vacuum.

Explicit solvent runs at constant pressure (Monte Carlo barostat). A run directory
holds ``topology.pdb`` (all atoms), ``traj.dcd`` (full float32 precision, streamed),
``settings.json``, and, once the run is complete, ``energies_forces.npz``:
``time_ps`` (F,), ``energy_kcal_mol`` (F,), ``forces_kcal_mol_A`` (F, A, 3),
``residue_interaction_kcal_mol`` (F, R: each protein residue's vacuum Coulomb +
Lennard-Jones energy with the ligand, :mod:`hemeplm.forcefield.labels`), ``residues`` (R,)
and ``ligand_atoms`` (L,). While it runs, labels go to ``labels/`` chunks and the
OpenMM checkpoint to ``state.npz`` (see :class:`MDRun`). Running the same command
again after a kill continues the run from its last saved frame.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import struct
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemeplm.data.load import dcd_layout, ENERGY_FILE, select_ligand
from hemeplm.errors import HemeplmError, require_file
from hemeplm.data.parameters import heme_hydrogen_definitions, HEME_PDB_NAMES, pair_parameters, prepare_heme, residue_labels
from hemeplm.io import atomic_write_bytes
from hemeplm.forcefield.labels import residue_interactions

TRAJ_FILE = "traj.dcd"
STATE_FILE = "state.npz"
LABEL_DIR = "labels"
#: everything a run writes, what ``--force`` removes
RUN_FILES = ("settings.json", ENERGY_FILE, TRAJ_FILE, "topology.pdb", STATE_FILE, LABEL_DIR)
PROTEIN_RESIDUES = ("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS",
                    "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "HID", "HIE", "HIP", "HSD",
                    "HSE", "HSP", "CYX", "ASH", "GLH", "LYN", "ACE", "NME")


@dataclass
class SimulateConfig:
    """Settings of one MD run (saved as ``settings.json``)."""

    steps: int = 50_000
    equilibrate_steps: int = 0
    report_every: int = 250
    timestep_fs: float = 4.0
    temperature_k: float = 300.0
    friction_per_ps: float = 1.0
    hydrogen_mass_amu: float | None = 3.0
    cutoff_nm: float = 1.2
    solvent: str = "implicit"
    padding_nm: float = 1.0
    seed: int = 0
    save_every_frames: int = 10
    threads: int | None = None
    platform: str | None = None  # CUDA, OpenCL, CPU or Reference; None: the fastest available
    pressure_bar: float | None = 1.0  # Monte Carlo barostat in explicit solvent (NPT); None: NVT
    ligand: str | None = None  # mdtraj selection for the interaction labels; None: detected


def file_id(path: str | Path) -> dict:
    """Name and SHA-256 of an input file: what ``settings.json`` records (a moved checkout still matches)."""
    import hashlib

    p = require_file(path)
    return {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def prepare_pdb(pdb: str | Path, cfg: SimulateConfig, constraints: bool = True):
    """PDB -> (topology, system, positions) with PDBFixer and CHARMM36 (explicit TIP3P or vacuum), or
    Amber14 (ff14SB) with OBC2 implicit solvent for a protein without heme (``cfg.solvent="implicit"``).

    Protein residues are completed (missing heavy atoms, hydrogens at pH 7),
    heme groups kept with CHARMM36 ``HEME`` parameters, every other
    heterogen (waters, ions, buffer molecules) removed. Bonds to hydrogen are
    constrained unless ``constraints`` is False (then every bond is flexible).
    """
    from openmm import app, unit
    from pdbfixer import PDBFixer

    path = require_file(pdb)
    try:
        if path.suffix == ".gz":
            import gzip

            fixer = PDBFixer(pdbfile=io.StringIO(gzip.open(path, "rt").read()))
        else:
            fixer = PDBFixer(filename=str(path))
    except Exception as exc:  # PDBFixer raises bare Exceptions on parse errors
        raise HemeplmError(f"cannot read as PDB: {exc}", path) from exc
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    keep = set(PROTEIN_RESIDUES) | set(HEME_PDB_NAMES)
    modeller.delete([r for r in modeller.topology.residues() if r.name not in keep])
    fixer.topology, fixer.positions = modeller.topology, modeller.positions
    implicit = cfg.solvent == "implicit"
    if implicit and any(r.name in HEME_PDB_NAMES for r in modeller.topology.residues()):
        raise HemeplmError("implicit solvent for a PDB is Amber14 + OBC2, which has no heme parameters; "
                           "use --solvent explicit or vacuum (CHARMM36)", path)
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    prepare_heme(modeller)
    modeller.loadHydrogenDefinitions(io.BytesIO(heme_hydrogen_definitions()))
    if implicit:
        files = ["amber14-all.xml", "implicit/obc2.xml"]
    else:
        files = ["charmm36.xml"] + (["charmm36/water.xml"] if cfg.solvent == "explicit" else [])
    forcefield = app.ForceField(*files)
    modeller.addHydrogens(forcefield, pH=7.0)
    if cfg.solvent == "explicit":
        modeller.addSolvent(forcefield, model="tip3p", padding=cfg.padding_nm * unit.nanometer,
                            ionicStrength=0.15 * unit.molar)
        method = app.PME
    else:
        method = app.NoCutoff
    kwargs = {"nonbondedCutoff": cfg.cutoff_nm * unit.nanometer} if method is app.PME else {}
    try:
        system = forcefield.createSystem(modeller.topology, nonbondedMethod=method,
                                         constraints=app.HBonds if constraints else None, **_hmr(cfg), **kwargs)
    except ValueError as exc:
        raise HemeplmError(f"{files[0]} cannot parameterise this structure: {exc}", path) from exc
    return modeller.topology, system, modeller.positions


def _hmr(cfg: SimulateConfig) -> dict:
    from openmm import unit

    if cfg.hydrogen_mass_amu is None:
        return {}
    return {"hydrogenMass": cfg.hydrogen_mass_amu * unit.amu}


def amber_system(prmtop: str | Path, cfg: SimulateConfig, constraints: bool = True):
    """Amber prmtop -> (topology, system) in OBC2 implicit solvent (``cfg.solvent="implicit"``) or vacuum.

    Bonds to hydrogen are constrained unless ``constraints`` is False (then every bond is flexible).
    """
    from openmm import app, unit

    top_path = require_file(prmtop)
    try:
        top = app.AmberPrmtopFile(str(top_path))
    except Exception as exc:
        raise HemeplmError(f"cannot read as Amber prmtop: {exc}", top_path) from exc
    implicit = {"implicit": app.OBC2, "vacuum": None}
    if cfg.solvent not in implicit:
        raise HemeplmError(f"solvent {cfg.solvent!r} is not available for a prmtop input; "
                           "use 'implicit' or 'vacuum'", top_path)
    system = top.createSystem(nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=cfg.cutoff_nm * unit.nanometer,
                              constraints=app.HBonds if constraints else None,
                              implicitSolvent=implicit[cfg.solvent], **_hmr(cfg))
    return top.topology, system


def prepare_amber(prmtop: str | Path, inpcrd: str | Path, cfg: SimulateConfig):
    """Amber prmtop + inpcrd -> (topology, system, positions) in OBC2 implicit solvent."""
    from openmm import app

    topology, system = amber_system(prmtop, cfg)
    crd_path = require_file(inpcrd)
    try:
        crd = app.AmberInpcrdFile(str(crd_path))
    except Exception as exc:
        raise HemeplmError(f"cannot read as Amber inpcrd: {exc}", crd_path) from exc
    if len(crd.positions) != topology.getNumAtoms():
        raise HemeplmError(f"has {len(crd.positions)} atoms but {prmtop} has "
                           f"{topology.getNumAtoms()}", crd_path)
    return topology, system, crd.positions


class MDRun:
    """One resumable MD run writing into ``out``.

    Frames are appended to ``traj.dcd`` (float32, the box per frame in explicit solvent) and
    their labels to one ``labels/NNNNNNNN.npz`` per save (NNNNNNNN: the first frame it holds),
    so memory and disk writes grow linearly with the run. Each save appends and fsyncs the
    frames, writes the chunk, then writes ``state.npz`` (frames done, OpenMM checkpoint)
    atomically; a resumed run cuts the DCD and the chunks back to the frames ``state.npz``
    counts, so frames, labels and the integrator state always agree. When the run is complete
    the chunks become ``energies_forces.npz`` (streamed, one chunk in memory at a time), where
    the data loader finds them.

    Args:
        topology, system, positions: an OpenMM system, as from :func:`prepare_amber`.
        cfg: run settings.
        out: run directory.
        inputs: the input files, recorded in ``settings.json``; a run directory
            holding another run's settings is refused.
        progress: show the equilibration's progress bar.
    """

    def __init__(self, topology, system, positions, cfg: SimulateConfig, out: str | Path, inputs: dict,
                 progress: bool = True):
        import openmm
        from openmm import app, unit

        if cfg.steps < cfg.report_every:
            raise HemeplmError(f"steps ({cfg.steps}) must be at least report_every ({cfg.report_every})")
        self.cfg, self.out, self.topology = cfg, Path(out), topology
        self.settings = {"inputs": inputs, "config": dataclasses.asdict(cfg), "units": {
            "time": "ps", "energy": "kcal/mol", "forces": "kcal/mol/A", "positions": "A (dcd)"}}
        self.out.mkdir(parents=True, exist_ok=True)
        settings_path = self.out / "settings.json"
        if settings_path.exists():
            old = json.loads(settings_path.read_text())
            if {k: old.get(k) for k in ("inputs", "config")} != {k: self.settings[k] for k in ("inputs", "config")}:
                raise HemeplmError("holds a run with other inputs or settings; choose another --out "
                                   "or pass --force to start over", self.out)
        integrator = openmm.LangevinMiddleIntegrator(cfg.temperature_k * unit.kelvin,
                                                     cfg.friction_per_ps / unit.picosecond,
                                                     cfg.timestep_fs * unit.femtosecond)
        integrator.setRandomNumberSeed(cfg.seed)
        barostat = any(isinstance(f, openmm.MonteCarloBarostat) for f in system.getForces())
        if system.usesPeriodicBoundaryConditions() and cfg.pressure_bar is not None and not barostat:
            system.addForce(openmm.MonteCarloBarostat(cfg.pressure_bar * unit.bar, cfg.temperature_k * unit.kelvin))
        platform = get_platform(cfg.platform)
        props = {"Threads": str(cfg.threads)} if cfg.threads and platform.getName() == "CPU" else {}
        self.sim = app.Simulation(topology, system, integrator, platform, props)
        self.labeller = InteractionLabeller(topology, system, cfg.ligand)
        self.n_frames = 0
        self._chunk: list[dict] = []
        if not self._resume():
            self._prepare(positions, progress)
            with open(self.out / "topology.pdb", "w") as fh:
                state = self.sim.context.getState(getPositions=True)
                app.PDBFile.writeFile(topology, state.getPositions(), fh, keepIds=True)
            atomic_write_bytes(settings_path, json.dumps(self.settings, indent=2).encode())

    @property
    def frames_total(self) -> int:
        return self.cfg.steps // self.cfg.report_every

    def _prepare(self, positions, progress: bool) -> None:
        """Minimise, draw velocities, equilibrate (unrecorded), reporting progress on stderr."""
        from openmm import unit
        from tqdm import tqdm

        cfg = self.cfg
        self.sim.context.setPositions(positions)
        read = self._energy()
        # the minimiser works on (and returns) the geometry with the system's constraints (bonds to hydrogen)
        # applied; the energy it starts from is that one's, not the input's (whose bond lengths differ):
        # reporting the input's made a minimised energy look higher than the start
        constrained = self.sim.system.getNumConstraints() > 0
        if constrained:
            self.sim.context.applyConstraints(1e-6)
        energy = self._energy()
        note = f" with {self.sim.system.getNumConstraints()} bond constraints applied; {read:.1f} as read" \
            if constrained else ""
        tqdm.write(f"{self.out}: minimising from {energy:.1f} kcal/mol{note}", file=sys.stderr)
        started = time.monotonic()
        self.sim.minimizeEnergy()
        tqdm.write(f"{self.out}: minimised to {self._energy():.1f} kcal/mol"
                   f"{' (constraints applied)' if constrained else ''} in {time.monotonic() - started:.0f} s",
                   file=sys.stderr)
        self.sim.context.setVelocitiesToTemperature(cfg.temperature_k * unit.kelvin, cfg.seed)
        block = max(1, min(cfg.report_every, cfg.equilibrate_steps))
        with tqdm(total=cfg.equilibrate_steps, unit="step", desc=f"equilibrating {self.out}", file=sys.stderr,
                  disable=not progress or not cfg.equilibrate_steps) as bar:
            for done in range(0, cfg.equilibrate_steps, block):
                n = min(block, cfg.equilibrate_steps - done)
                self.sim.step(n)
                bar.update(n)
        self.sim.context.setTime(0.0)

    def _energy(self) -> float:
        from openmm import unit

        state = self.sim.context.getState(getEnergy=True)
        return state.getPotentialEnergy().value_in_unit(unit.kilocalorie_per_mole)

    def _resume(self) -> bool:
        """Continue from ``state.npz``: cut the DCD and chunks back to its frame count."""
        state_path = self.out / STATE_FILE
        if not state_path.exists():
            return False
        with np.load(state_path) as z:
            self.n_frames = int(z["frames"])
            self.sim.context.loadCheckpoint(z["checkpoint"].tobytes())
        truncate_dcd(self.out / TRAJ_FILE, self.n_frames)
        for chunk in sorted((self.out / LABEL_DIR).glob("*.npz")):
            if int(chunk.stem) >= self.n_frames:
                chunk.unlink()
        return True

    def _dcd(self):
        """OpenMM's DCD writer appending to ``traj.dcd`` (created on the first frame)."""
        from openmm import app, unit

        path = self.out / TRAJ_FILE
        append = path.exists()
        fh = open(path, "r+b" if append else "wb")
        return fh, app.DCDFile(fh, self.topology, self.cfg.timestep_fs * unit.femtosecond, firstStep=self.cfg.report_every,
                               interval=self.cfg.report_every, append=append)

    def _save(self, fh) -> None:
        """Make the frames written so far durable: fsync the DCD, write the chunk, then the state."""
        fh.flush()
        os.fsync(fh.fileno())
        first = self.n_frames - len(self._chunk)
        (self.out / LABEL_DIR).mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.stack([row[k] for row in self._chunk]) for k in self._chunk[0]})
        atomic_write_bytes(self.out / LABEL_DIR / f"{first:08d}.npz", buf.getvalue())
        buf = io.BytesIO()
        np.savez(buf, frames=np.int64(self.n_frames),
                 checkpoint=np.frombuffer(self.sim.context.createCheckpoint(), dtype=np.uint8))
        atomic_write_bytes(self.out / STATE_FILE, buf.getvalue())
        self._chunk = []

    def run(self, progress: bool = True) -> Path:
        """Run to ``cfg.steps``, saving every ``save_every_frames`` frames; return ``out``."""
        from openmm import unit
        from tqdm import tqdm

        bar = tqdm(total=self.frames_total, initial=self.n_frames, unit="frame", disable=not progress,
                   desc=f"MD -> {self.out}")
        fh, dcd = self._dcd()
        try:
            for i in range(self.n_frames, self.frames_total):
                self.sim.step(self.cfg.report_every)
                state = self.sim.context.getState(getPositions=True, getForces=True, getEnergy=True)
                energy = state.getPotentialEnergy().value_in_unit(unit.kilocalorie_per_mole)
                if not np.isfinite(energy):
                    raise HemeplmError(f"potential energy became {energy} at frame {i}; lower the time step",
                                       self.out)
                positions = state.getPositions(asNumpy=True)
                dcd.writeModel(positions, periodicBoxVectors=state.getPeriodicBoxVectors())
                xyz = np.asarray(positions.value_in_unit(unit.angstrom))
                forces = state.getForces(asNumpy=True).value_in_unit(unit.kilocalorie_per_mole / unit.angstrom)
                self._chunk.append({
                    "time_ps": state.getTime().value_in_unit(unit.picosecond), "energy_kcal_mol": energy,
                    "forces_kcal_mol_A": np.asarray(forces, dtype=np.float32),
                    "residue_interaction_kcal_mol": self.labeller(xyz)})
                self.n_frames = i + 1
                if self.n_frames % self.cfg.save_every_frames == 0 or self.n_frames == self.frames_total:
                    self._save(fh)
                bar.update(1)
        finally:
            fh.close()
            bar.close()
        if not (self.out / ENERGY_FILE).exists():
            self._assemble()
        return self.out

    def _assemble(self) -> None:
        """Stream the label chunks into ``energies_forces.npz`` (plus ``residues`` and ``ligand_atoms``)."""
        chunks = sorted((self.out / LABEL_DIR).glob("*.npz"))
        tmp = self.out / f".{ENERGY_FILE}.{os.getpid()}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with np.load(chunks[0]) as z:
                keys = {k: (z[k].dtype, z[k].shape[1:]) for k in z.files}
            for key, (dtype, shape) in keys.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                               "fortran_order": False,
                                                               "shape": (self.n_frames, *shape)})
                    for chunk in chunks:
                        with np.load(chunk) as z:
                            out.write(np.ascontiguousarray(z[key], dtype=dtype).tobytes())
            for key, value in (("residues", np.asarray(self.labeller.names)), ("ligand_atoms", self.labeller.ligand)):
                with zf.open(f"{key}.npy", "w") as out:
                    np.lib.format.write_array(out, value)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.out / ENERGY_FILE)
        shutil.rmtree(self.out / LABEL_DIR)


class InteractionLabeller:
    """Per-residue protein–ligand interaction energies of frames of an OpenMM system.

    Vacuum definition (:mod:`hemeplm.forcefield.labels`: Coulomb + Lennard-Jones, all atoms, no cutoff)
    computed from the positions, so the labels do not depend on the solvent model. The
    ligand is an mdtraj selection (None: detected, as the data loader does).

    Attributes:
        names: (R,) protein residue names (``ALA99``).
        ligand: (L,) ligand atom indices.
    """

    def __init__(self, topology, system, ligand: str | None = None):
        import mdtraj

        md_top = mdtraj.Topology.from_openmm(topology)
        self.params = pair_parameters(system)
        self.residue, self.names = residue_labels(md_top)
        self.ligand = select_ligand(md_top, ligand)

    def __call__(self, xyz: np.ndarray) -> np.ndarray:
        """(A, 3) positions in Å -> (R,) interaction energies in kcal/mol."""

        return residue_interactions(self.params, xyz[None], self.residue, self.ligand, len(self.names))[0]


def truncate_dcd(path: Path, n_frames: int) -> None:
    """Cut a DCD written by OpenMM back to its first ``n_frames`` frames (the header's counts too)."""

    if not path.exists():
        return
    layout = dcd_layout(path)
    if layout is None:
        raise HemeplmError("cannot resume: not a readable DCD header", path)
    header, frame = layout
    if path.stat().st_size < header + n_frames * frame:
        raise HemeplmError(f"cannot resume: holds fewer than the {n_frames} frames the checkpoint counts", path)
    with open(path, "r+b") as fh:
        fh.truncate(header + n_frames * frame)
        fh.seek(8)
        fh.write(struct.pack("<i", n_frames))  # NSET: frames in the file
        fh.seek(12)
        first, interval = struct.unpack("<2i", fh.read(8))
        fh.write(struct.pack("<i", first + (n_frames - 1) * interval))  # the last frame's step
        fh.flush()
        os.fsync(fh.fileno())


def platforms() -> list[str]:
    """Names of the OpenMM platforms available here."""
    import openmm

    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def fastest_platform() -> str:
    """The available OpenMM platform with the highest speed rating (CUDA > OpenCL > CPU > Reference)."""
    import openmm

    return max(platforms(), key=lambda name: openmm.Platform.getPlatformByName(name).getSpeed())


def get_platform(name: str | None):
    """The OpenMM Platform called ``name`` (None: :func:`fastest_platform`); an error names the available ones."""
    import openmm

    name = name or fastest_platform()
    if name not in platforms():
        raise HemeplmError(f"OpenMM has no {name} platform here; available: {', '.join(platforms())}")
    return openmm.Platform.getPlatformByName(name)
