"""OpenMM molecular dynamics that produces training data.

Two ways in:

* an Amber ``prmtop`` + ``inpcrd`` pair, run in implicit solvent (OBC2);
* a PDB file (e.g. a downloaded 3CQV), cleaned by PDBFixer and parameterised
  with CHARMM36. A heme (``HEM``) is renamed to CHARMM's ``HEME``, given the
  template's bonds and hydrogens, and simulated in explicit TIP3P water or in
  vacuum.

A run directory holds ``topology.pdb`` (all atoms), ``traj.xtc``,
``energies_forces.npz`` (``time_ps`` (F,), ``energy_kcal_mol`` (F,),
``forces_kcal_mol_A`` (F, A, 3)) and ``settings.json``. Every file is written
atomically; the OpenMM checkpoint lives inside the npz so that frames,
energies and the integrator state always agree. Running the same command
again after a kill continues the run from its last saved frame.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HemeplmError, require_file

KJ_PER_KCAL = 4.184
HEME_PDB_NAMES = ("HEM", "HEC", "HEME")
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


def file_id(path: str | Path) -> dict:
    """Name and SHA-256 of an input file: what ``settings.json`` records (a moved checkout still matches)."""
    import hashlib

    p = require_file(path)
    return {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@functools.lru_cache(maxsize=None)
def _heme_template(forcefield_file: str = "charmm36.xml") -> tuple[list[str], list[tuple[str, str]]]:
    """Atom names and bonds of CHARMM36's ``HEME`` residue template."""
    from openmm.app import forcefield as ffmod

    path = Path(ffmod.__file__).parent / "data" / forcefield_file
    for res in ET.parse(path).getroot().iter("Residue"):
        if res.get("name") == "HEME":
            atoms = [a.get("name") for a in res.iter("Atom")]
            bonds = [(b.get("atomName1"), b.get("atomName2")) for b in res.iter("Bond")]
            return atoms, bonds
    raise HemeplmError("no HEME residue template", path)


def _heme_hydrogen_definitions() -> bytes:
    """Hydrogen definitions for ``HEME`` (each template H with its bonded heavy atom)."""
    atoms, bonds = _heme_template()
    hydrogens = {a for a in atoms if a.startswith("H")}
    lines = ["<Residues>", ' <Residue name="HEME">']
    for a, b in bonds:
        if a in hydrogens and b not in hydrogens:
            lines.append(f'  <H name="{a}" parent="{b}"/>')
        elif b in hydrogens and a not in hydrogens:
            lines.append(f'  <H name="{b}" parent="{a}"/>')
    lines += [" </Residue>", "</Residues>"]
    return "\n".join(lines).encode()


def _prepare_heme(modeller) -> int:
    """Rename heme residues to ``HEME`` and add the template's heavy-atom bonds.

    Returns the number of hemes found.
    """
    _, bonds = _heme_template()
    n = 0
    existing = {frozenset((b[0].index, b[1].index)) for b in modeller.topology.bonds()}
    for res in modeller.topology.residues():
        if res.name not in HEME_PDB_NAMES:
            continue
        n += 1
        res.name = "HEME"
        by_name = {a.name: a for a in res.atoms()}
        for a, b in bonds:
            if a in by_name and b in by_name:
                key = frozenset((by_name[a].index, by_name[b].index))
                if key not in existing:
                    modeller.topology.addBond(by_name[a], by_name[b])
    return n


def prepare_pdb(pdb: str | Path, cfg: SimulateConfig):
    """PDB -> (topology, system, positions) with PDBFixer and CHARMM36.

    Protein residues are completed (missing heavy atoms, hydrogens at pH 7),
    heme groups kept with CHARMM36 ``HEME`` parameters, every other
    heterogen (waters, ions, buffer molecules) removed.
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
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    modeller = app.Modeller(fixer.topology, fixer.positions)
    _prepare_heme(modeller)
    modeller.loadHydrogenDefinitions(io.BytesIO(_heme_hydrogen_definitions()))
    files = ["charmm36.xml"] + (["charmm36/water.xml"] if cfg.solvent == "explicit" else [])
    forcefield = app.ForceField(*files)
    modeller.addHydrogens(forcefield, pH=7.0)
    if cfg.solvent == "explicit":
        modeller.addSolvent(forcefield, model="tip3p", padding=cfg.padding_nm * unit.nanometer,
                            ionicStrength=0.15 * unit.molar)
        method = app.PME
    elif cfg.solvent == "vacuum":
        method = app.NoCutoff
    else:
        raise HemeplmError(f"solvent {cfg.solvent!r} is not available for a PDB input; "
                           "use 'explicit' or 'vacuum'", path)
    kwargs = {"nonbondedCutoff": cfg.cutoff_nm * unit.nanometer} if method is app.PME else {}
    try:
        system = forcefield.createSystem(modeller.topology, nonbondedMethod=method,
                                         constraints=app.HBonds, **_hmr(cfg), **kwargs)
    except ValueError as exc:
        raise HemeplmError(f"CHARMM36 cannot parameterise this structure: {exc}", path) from exc
    return modeller.topology, system, modeller.positions


def _hmr(cfg: SimulateConfig) -> dict:
    from openmm import unit

    if cfg.hydrogen_mass_amu is None:
        return {}
    return {"hydrogenMass": cfg.hydrogen_mass_amu * unit.amu}


def prepare_amber(prmtop: str | Path, inpcrd: str | Path, cfg: SimulateConfig):
    """Amber prmtop + inpcrd -> (topology, system, positions) in OBC2 implicit solvent."""
    from openmm import app, unit

    top_path, crd_path = require_file(prmtop), require_file(inpcrd)
    try:
        top = app.AmberPrmtopFile(str(top_path))
    except Exception as exc:
        raise HemeplmError(f"cannot read as Amber prmtop: {exc}", top_path) from exc
    try:
        crd = app.AmberInpcrdFile(str(crd_path))
    except Exception as exc:
        raise HemeplmError(f"cannot read as Amber inpcrd: {exc}", crd_path) from exc
    if len(crd.positions) != top.topology.getNumAtoms():
        raise HemeplmError(f"has {len(crd.positions)} atoms but {top_path} has "
                           f"{top.topology.getNumAtoms()}", crd_path)
    implicit = {"implicit": app.OBC2, "vacuum": None}
    if cfg.solvent not in implicit:
        raise HemeplmError(f"solvent {cfg.solvent!r} is not available for a prmtop input; "
                           "use 'implicit' or 'vacuum'", top_path)
    system = top.createSystem(nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=cfg.cutoff_nm * unit.nanometer,
                              constraints=app.HBonds, implicitSolvent=implicit[cfg.solvent], **_hmr(cfg))
    return top.topology, system, crd.positions


class MDRun:
    """One resumable MD run writing into ``out``.

    Args:
        topology, system, positions: an OpenMM system, as from :func:`prepare_amber`.
        cfg: run settings.
        out: run directory.
        inputs: the input files, recorded in ``settings.json``; a run directory
            holding another run's settings is refused.
    """

    def __init__(self, topology, system, positions, cfg: SimulateConfig, out: str | Path, inputs: dict):
        import openmm
        from openmm import app, unit

        self.cfg, self.out, self.topology = cfg, Path(out), topology
        self.settings = {"inputs": inputs, "config": dataclasses.asdict(cfg), "units": {
            "time": "ps", "energy": "kcal/mol", "forces": "kcal/mol/A", "positions": "nm (xtc)"}}
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
        platform = openmm.Platform.getPlatformByName("CPU") if _has_platform("CPU") else None
        props = {"Threads": str(cfg.threads)} if cfg.threads and platform is not None else {}
        self.sim = app.Simulation(topology, system, integrator, platform, props)
        self.times: list[float] = []
        self.energies: list[float] = []
        self.forces: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        if not self._resume():
            self.sim.context.setPositions(positions)
            self.sim.minimizeEnergy()
            self.sim.context.setVelocitiesToTemperature(cfg.temperature_k * unit.kelvin, cfg.seed)
            self.sim.step(cfg.equilibrate_steps)
            self.sim.context.setTime(0.0)
            state = self.sim.context.getState(getPositions=True)
            with open(self.out / "topology.pdb", "w") as fh:
                app.PDBFile.writeFile(topology, state.getPositions(), fh, keepIds=True)
            atomic_write_bytes(settings_path, json.dumps(self.settings, indent=2).encode())

    @property
    def frames_total(self) -> int:
        return self.cfg.steps // self.cfg.report_every

    def _resume(self) -> bool:
        npz_path = self.out / "energies_forces.npz"
        if not npz_path.exists():
            return False
        import mdtraj

        with np.load(npz_path) as z:
            n = int(z["time_ps"].shape[0])
            self.times = list(z["time_ps"])
            self.energies = list(z["energy_kcal_mol"])
            self.forces = list(z["forces_kcal_mol_A"])
            self.sim.context.loadCheckpoint(z["checkpoint"].tobytes())
        traj = mdtraj.load(str(self.out / "traj.xtc"), top=str(self.out / "topology.pdb"))
        self.positions = list(traj.xyz[:n])
        return True

    def _save(self) -> None:
        import mdtraj

        xtc = self.out / "traj.xtc"
        tmp = xtc.with_name(f".traj.{os.getpid()}.tmp.xtc")
        with mdtraj.formats.XTCTrajectoryFile(str(tmp), "w") as fh:
            fh.write(np.stack(self.positions), time=np.asarray(self.times, dtype=np.float32))
        os.replace(tmp, xtc)
        buf = io.BytesIO()
        np.savez_compressed(buf, time_ps=np.asarray(self.times, dtype=np.float64),
                            energy_kcal_mol=np.asarray(self.energies, dtype=np.float64),
                            forces_kcal_mol_A=np.stack(self.forces).astype(np.float32),
                            checkpoint=np.frombuffer(self.sim.context.createCheckpoint(), dtype=np.uint8))
        atomic_write_bytes(self.out / "energies_forces.npz", buf.getvalue())

    def run(self, progress: bool = True) -> Path:
        """Run to ``cfg.steps``, saving every ``save_every_frames`` frames; return ``out``."""
        from openmm import unit
        from tqdm import tqdm

        done = len(self.times)
        bar = tqdm(total=self.frames_total, initial=done, unit="frame", disable=not progress,
                   desc=f"MD -> {self.out}")
        for i in range(done, self.frames_total):
            self.sim.step(self.cfg.report_every)
            state = self.sim.context.getState(getPositions=True, getForces=True, getEnergy=True)
            self.times.append(state.getTime().value_in_unit(unit.picosecond))
            energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_KCAL
            if not np.isfinite(energy):
                raise HemeplmError(f"potential energy became {energy} at frame {i}; lower the time step", self.out)
            self.energies.append(energy)
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            self.forces.append((np.asarray(forces) / KJ_PER_KCAL / 10.0).astype(np.float32))
            self.positions.append(np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                                             dtype=np.float32))
            if (i + 1) % self.cfg.save_every_frames == 0 or i + 1 == self.frames_total:
                self._save()
            bar.update(1)
        bar.close()
        return self.out


def _has_platform(name: str) -> bool:
    import openmm

    return any(openmm.Platform.getPlatform(i).getName() == name for i in range(openmm.Platform.getNumPlatforms()))
