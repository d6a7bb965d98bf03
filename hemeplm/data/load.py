"""Load MD trajectories with mdtraj into one clean, superposed :class:`MDSystem`.

Topologies: PDB (also ``.pdb.gz``), PSF, Amber prmtop, GRO, HDF5.
Trajectories: DCD, XTC, TRR, HDF5, NetCDF (and multi-model PDB / GRO).
Several trajectory files are several independent segments. Solvent and
counter-ions are dropped; hydrogens are dropped unless asked for (their MD
forces are then summed onto their heavy atoms). Frames are superposed on the
protein Cα of the first frame. Coordinates are in Å, energies in kcal/mol,
forces in kcal/mol/Å.

A DCD or XTC file cut in the middle of a frame (an MD run still writing, a copy
cut short) is an error, or, with ``truncated="warn"``, gives its complete
frames and a warning; mdtraj alone would drop the partial frame silently (DCD)
or fail (XTC). Every problem with an input is a :class:`HemeplmError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError, require_file
from hemeplm.data.numbering import number_amber_residues
from hemeplm.data.residues import ION_NAMES
from hemeplm.data.parameters import read_charges, residue_labels
from hemeplm.geometry.rigid import superposition

log = logging.getLogger(__name__)

TOPOLOGY_FORMATS = (".pdb", ".pdb.gz", ".ent", ".psf", ".prmtop", ".parm7", ".gro", ".h5")
TRAJECTORY_FORMATS = (".dcd", ".xtc", ".trr", ".h5", ".nc", ".ncdf", ".netcdf", ".pdb", ".pdb.gz", ".gro")
ENERGY_FILE = "energies_forces.npz"
MAX_COORDINATE_A = 1e5  # far beyond any MD box: larger values mean wrong units or a corrupt file


def _suffix(path: Path, formats: tuple[str, ...], kind: str) -> str:
    name = path.name.lower()
    for ext in sorted(formats, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise HemeplmError(f"unknown {kind} format {path.suffix!r}; supported: {', '.join(formats)}", path)


@dataclass
class MDSystem:
    """A protein(–ligand) system and its superposed trajectory segments.

    Attributes:
        topology: mdtraj Topology of the kept atoms (A atoms).
        segments: list of (F_s, A, 3) float32 coordinates in Å.
        timestep_ps: time between saved frames.
        ligand: (L,) indices of ligand atoms among the kept atoms (may be empty).
        source_index: (A,) index of each kept atom in the original topology.
        energies: per segment, (F_s,) potential energy in kcal/mol, or None.
        forces: per segment, (F_s, A, 3) forces in kcal/mol/Å, or None.
        interactions: per segment, (F_s, R) protein–ligand interaction energy of each protein
            residue in kcal/mol (:mod:`hemeplm.forcefield.labels`), or None.
        charges: (A,) partial charges (e) from the topology, hydrogens folded onto
            their heavy atom, or None when the topology has none.
        files: the trajectory files, one per segment.
        full_topology: the topology as read (with hydrogens), for ligand chemistry.
        full_ligand: indices of the ligand in ``full_topology``.
        full_first_frame: (A_full, 3) first frame in Å, all atoms.
        full_charges: (A_full,) topology partial charges, or None.
    """

    topology: object
    segments: list[np.ndarray]
    timestep_ps: float
    ligand: np.ndarray
    source_index: np.ndarray
    energies: list
    forces: list
    interactions: list
    charges: np.ndarray | None
    files: list[str]
    full_topology: object = None
    full_ligand: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    full_first_frame: np.ndarray | None = None
    full_charges: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms


def load_topology(path: str | Path):
    """Read a topology file with mdtraj (an Amber prmtop keeps its residue numbers); errors name the file."""
    import mdtraj

    p = require_file(path)
    ext = _suffix(p, TOPOLOGY_FORMATS, "topology")
    try:
        if ext == ".pdb.gz":
            return mdtraj.load(str(p)).topology
        if ext == ".h5":
            return mdtraj.load_frame(str(p), 0).topology
        top = mdtraj.load_topology(str(p))
        if ext in (".prmtop", ".parm7"):
            number_amber_residues(top, p)
        return top
    except HemeplmError:
        raise
    except Exception as exc:
        raise HemeplmError(f"cannot read as a {ext} topology: {exc}", p) from exc


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what C code prints to stdout (mdtraj's DCD plugin does) to stderr, keeping stdout for results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def dcd_layout(p: Path) -> tuple[int, int] | None:
    """(header bytes, bytes per frame) of a DCD file from its header; None if the header is unusual."""
    with open(p, "rb") as fh:
        head = fh.read(96)  # record marker, "CORD", 20 control ints, marker, title record length
        endian = next((e for e in "<>" if len(head) == 96 and head[4:8] == b"CORD"
                       and struct.unpack(e + "i", head[:4])[0] == 84), None)
        if endian is None:
            return None
        icntrl = struct.unpack(endian + "20i", head[8:88])
        title = struct.unpack(endian + "i", head[92:96])[0]
        if title < 0 or icntrl[8] != 0:  # fixed atoms make the first frame longer: not checked
            return None
        fh.seek(96 + title + 4)
        atoms = fh.read(12)
        header = fh.tell()
    n_atoms = struct.unpack(endian + "3i", atoms)[1] if len(atoms) == 12 else 0
    if n_atoms <= 0:
        return None
    charmm = icntrl[19] != 0
    cell = 56 if charmm and icntrl[10] != 0 else 0  # 6 doubles in their record
    return header, (4 if charmm and icntrl[11] != 0 else 3) * (4 * n_atoms + 8) + cell


def _dcd_frames(p: Path) -> tuple[int, int] | None:
    """(complete frames, bytes left over) of a DCD file from its header and size; None if the header is unusual."""
    layout = dcd_layout(p)
    if layout is None:
        return None
    header, frame = layout
    return divmod(p.stat().st_size - header, frame)


def _xtc_frames(p: Path) -> tuple[int, int] | None:
    """(complete frames, bytes left over) of an XTC file, walking its frame headers; None if not XTC 1995."""
    size = p.stat().st_size
    n = pos = 0
    with open(p, "rb") as fh:
        while True:
            head = fh.read(92)
            if len(head) < 8:
                break
            magic, n_atoms = struct.unpack(">2i", head[:8])
            if magic != 1995:
                return None
            if n_atoms <= 9:  # stored uncompressed
                length = 56 + 12 * n_atoms
            elif len(head) == 92:
                length = 92 + (struct.unpack(">i", head[88:92])[0] + 3) // 4 * 4
            else:
                break
            if length <= 0 or pos + length > size:
                break
            pos += length
            n += 1
            fh.seek(pos)
    return n, size - pos


def load_trajectory(path: str | Path, topology, top_path: Path, truncated: str = "error", check_frames: bool = True):
    """Read one trajectory file with mdtraj against ``topology`` (read from ``top_path``); errors name the file.

    A truncated DCD/XTC is an error or (``truncated="warn"``) gives its complete frames. With
    ``check_frames`` a frame with NaN, infinite or absurdly large coordinates is an error; without,
    such frames are returned as they are, for the caller to judge one by one.
    """
    import mdtraj

    p = require_file(path)
    ext = _suffix(p, TRAJECTORY_FORMATS, "trajectory")
    count = {".dcd": _dcd_frames, ".xtc": _xtc_frames}.get(ext)
    counted = count(p) if count else None
    n_frames = None
    if counted is not None and counted[1] > 0:
        n_frames, rest = counted
        msg = (f"is truncated: {n_frames} complete frame(s), then {rest} bytes of a partial frame "
               f"(an MD run still writing, or a copy cut short?)")
        if n_frames == 0:
            raise HemeplmError(msg, p)
        if truncated == "error":
            raise HemeplmError(f"{msg}; set data.truncated=warn to use the complete frames", p)
        log.warning("%s: %s; using the complete frames", p, msg)
    try:
        with warnings.catch_warnings(), _stdout_to_stderr():
            warnings.simplefilter("ignore")
            if n_frames is None:
                traj = mdtraj.load(str(p), top=topology)
            else:
                with mdtraj.open(str(p)) as fh:
                    traj = fh.read_as_traj(topology, n_frames=n_frames)
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        if "atoms" in msg.lower() or "topology" in msg.lower():
            raise HemeplmError(f"has a different number of atoms than topology {top_path} "
                               f"({topology.n_atoms} atoms)", p) from exc
        raise HemeplmError(f"cannot read trajectory: {msg}", p) from exc
    except Exception as exc:
        raise HemeplmError(f"cannot read trajectory: {' '.join(str(exc).split())}", p) from exc
    if traj.n_atoms != topology.n_atoms:
        raise HemeplmError(f"has {traj.n_atoms} atoms but topology {top_path} has {topology.n_atoms}", p)
    if traj.n_frames == 0:
        raise HemeplmError("holds no frames", p)
    if not check_frames:
        return traj
    bad = ~np.isfinite(traj.xyz).all(axis=(1, 2))
    if bad.any():
        raise HemeplmError(f"frame {int(np.argmax(bad))} has NaN or infinite coordinates "
                           f"({int(bad.sum())} bad frame(s))", p)
    huge = np.abs(traj.xyz).max(axis=(1, 2), initial=0.0) * 10.0 > MAX_COORDINATE_A
    if huge.any():
        raise HemeplmError(f"frame {int(np.argmax(huge))} has coordinates beyond {MAX_COORDINATE_A:g} Å "
                           f"(wrong units or a corrupt file?; {int(huge.sum())} bad frame(s))", p)
    return traj


def frame_span(n_frames: int, start: int | None, stop: int | None, path: str | Path) -> slice:
    """The frames ``--start``..``--stop`` (None: the first, the end) of a trajectory of ``n_frames``, as a
    slice; a range that is out of the file or empty is a :class:`HemeplmError` naming ``path``."""
    first = 0 if start is None else start
    last = n_frames if stop is None else stop
    if first >= n_frames or last > n_frames:
        given = " ".join(f"--{k} {v}" for k, v in (("start", start), ("stop", stop)) if v is not None)
        raise HemeplmError(f"{given} is out of range: it has {n_frames} frames (0..{n_frames - 1})", path)
    if last <= first:
        raise HemeplmError(f"--stop {last} must be above --start {first}", path)
    return slice(first, last)


def select_ligand(topology, selection: str | None, path: str | Path = "topology") -> np.ndarray:
    """Atom indices of the ligand in ``topology``.

    Args:
        selection: an mdtraj selection; ``None`` detects the ligand as the residue
            name with the most atoms among non-protein, non-solvent, non-ion residues;
            ``"none"`` means protein only.
    Returns:
        (L,) int64 indices, sorted.
    """
    if selection is not None and selection.strip().lower() == "none":
        return np.zeros(0, dtype=np.int64)
    if selection is not None:
        try:
            idx = topology.select(selection)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HemeplmError(f"invalid ligand selection {selection!r}: {reason}", path) from exc
        if len(idx) == 0:
            raise HemeplmError(f"ligand selection {selection!r} matches no atom", path)
        return np.asarray(idx, dtype=np.int64)
    sizes: dict[str, int] = {}
    for res in topology.residues:
        if res.is_protein or res.is_water or res.name.upper() in ION_NAMES:
            continue
        sizes[res.name] = sizes.get(res.name, 0) + res.n_atoms
    if not sizes:
        return np.zeros(0, dtype=np.int64)
    name = max(sizes, key=lambda n: (sizes[n], n))
    return np.array([a.index for r in topology.residues if r.name == name for a in r.atoms], dtype=np.int64)


def _read_energies(traj_path: Path, n_frames: int, topology) -> dict | None:
    """Labels from ``energies_forces.npz`` beside a trajectory, when its frames and atoms match;
    None when there is no such file.

    Returns ``energy`` (F,), ``forces`` (F, A, 3), ``interaction`` (F, R) or None (absent, or
    its residue names differ from the topology's protein residues) and ``times`` (F,) frame
    times in ps or None (not stored).
    """

    p = traj_path.parent / ENERGY_FILE
    if not p.exists():
        return None
    try:
        with np.load(p) as z:
            energy = np.asarray(z["energy_kcal_mol"], dtype=np.float64)
            forces = np.asarray(z["forces_kcal_mol_A"], dtype=np.float64)
            inter = np.asarray(z["residue_interaction_kcal_mol"], dtype=np.float64) \
                if "residue_interaction_kcal_mol" in z.files else None
            names = [str(r) for r in z["residues"]] if "residues" in z.files else None
            times = np.asarray(z["time_ps"], dtype=np.float64) if "time_ps" in z.files else None
    except Exception as exc:  # a damaged archive fails anywhere in zip or npy parsing
        raise HemeplmError(f"cannot read energies and forces: {' '.join(str(exc).split()) or type(exc).__name__}",
                           p) from exc
    if energy.shape != (n_frames,) or forces.shape != (n_frames, topology.n_atoms, 3):
        log.warning("%s: frames or atoms do not match %s; energies not used", p, traj_path)
        return None
    arrays = [energy, forces] + ([] if inter is None else [inter])
    if not all(np.isfinite(a).all() for a in arrays):
        raise HemeplmError("energies, forces or interaction energies contain NaN or infinite values", p)
    if inter is not None and (names != residue_labels(topology)[1] or inter.shape[0] != n_frames):
        log.warning("%s: its residues do not match the topology's protein residues; interaction energies "
                    "not used", p)
        inter = None
    return {"energy": energy, "forces": forces, "interaction": inter,
            "times": times if times is not None and times.shape == (n_frames,) else None}


def frame_spacing(files: list[Path], times: list[np.ndarray], label_times: list[np.ndarray | None],
                  timestep_ps: float | None = None) -> float:
    """Time between saved frames (ps) of trajectory segments.

    Args:
        files: the segments' files.
        times: per segment, (F_s,) frame times as mdtraj reads them (ps).
        label_times: per segment, (F_s,) ``time_ps`` of its ``energies_forces.npz``, or None.
        timestep_ps: the spacing given by the user (``data.timestep_ps``); wins when set.
    Returns:
        The spacing; 1.0 when no segment has two frames. A file that carries no real time (a DCD,
        whose frames mdtraj numbers 0, 1, 2, ...; or times equal to the frame indices) is taken at
        1 ps per frame with a warning. Segments whose spacings differ are an error naming them.
    """
    if timestep_ps is not None:
        if not timestep_ps > 0:
            raise HemeplmError(f"data.timestep_ps must be positive, got {timestep_ps}")
        return float(timestep_ps)
    spacing = {}
    for path, t, labelled in zip(files, times, label_times):
        if len(t) < 2:
            continue
        real = [x for x in (labelled, None if path.name.lower().endswith(".dcd") else t)
                if x is not None and not np.array_equal(x, np.arange(len(x)))]
        if not real:
            log.warning("%s: holds no frame times (%s); frames taken as 1 ps apart: set data.timestep_ps "
                        "(--timestep-ps) to the real spacing", path,
                        "a DCD" if path.name.lower().endswith(".dcd") else "its times are the frame indices")
        spacing[path] = float(real[0][1] - real[0][0]) if real else 1.0
    if not spacing:
        return 1.0
    values = list(spacing.values())
    if not np.allclose(values, values[0], rtol=1e-3):
        listed = ", ".join(f"{p}: {v:g} ps" for p, v in spacing.items())
        raise HemeplmError(f"trajectory segments have different frame spacings ({listed}); give segments "
                           f"saved at one spacing, or set data.timestep_ps (--timestep-ps) if a file's times are wrong")
    return values[0]


def load_system(topology: str | Path, trajectories: list[str | Path], ligand: str | None = None,
                hydrogens: bool = False, truncated: str = "error", timestep_ps: float | None = None,
                forcefield: list[str] | None = None) -> MDSystem:
    """Load, clean and superpose trajectories of one system.

    Args:
        topology: topology file.
        trajectories: trajectory files, each an independent segment; empty means
            the topology's own coordinates (one segment).
        ligand: see :func:`select_ligand`.
        hydrogens: keep hydrogen atoms.
        truncated: ``"error"`` or ``"warn"``: what a DCD/XTC file cut mid-frame gives.
        timestep_ps: time between frames; None reads it from the files (:func:`frame_spacing`).
        forcefield: files that give the topology its partial charges (:func:`read_charges`).
    """
    if truncated not in ("error", "warn"):
        raise HemeplmError(f"data.truncated must be 'error' or 'warn', got {truncated!r}")
    top_path = Path(topology)
    top = load_topology(top_path)
    if not any(r.is_protein for r in top.residues):
        raise HemeplmError("has no protein residues", top_path)
    if not trajectories and not top_path.name.lower().endswith(TRAJECTORY_FORMATS):
        raise HemeplmError("holds no coordinates; give trajectory files", top_path)
    files = [Path(t) for t in trajectories] or [top_path]
    trajs = [load_trajectory(f, top, top_path, truncated) for f in files]
    lig_full = select_ligand(top, ligand, top_path)
    lig_set = set(lig_full.tolist())
    keep = [a.index for a in top.atoms
            if (a.residue.is_protein or a.index in lig_set)
            and (hydrogens or a.element is None or a.element.symbol != "H")]
    keep = np.asarray(keep, dtype=np.int64)
    # hydrogen -> heavy atom it is bonded to, to fold forces and charges
    owner = np.arange(top.n_atoms)
    if not hydrogens:
        for a, b in top.bonds:
            for h, heavy in ((a, b), (b, a)):
                if h.element is not None and h.element.symbol == "H" and heavy.element.symbol != "H":
                    owner[h.index] = heavy.index
    new_index = -np.ones(top.n_atoms, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    fold = new_index[owner]  # kept atom receiving each original atom's force/charge, or -1

    sub_top = top.subset(keep)
    lig_kept = set(new_index[lig_full].tolist())
    ca = np.array([a.index for a in sub_top.atoms
                   if a.name == "CA" and a.residue.is_protein and a.index not in lig_kept])
    if len(ca) < 3:
        raise HemeplmError(f"needs at least 3 protein CA atoms outside the ligand to superpose, found {len(ca)}",
                           top_path)
    charges_full = read_charges(top_path, forcefield)
    if charges_full is not None and len(charges_full) != top.n_atoms:
        log.warning("%s: the force field gives %d charges for %d atoms; not used",
                    top_path, len(charges_full), top.n_atoms)
        charges_full = None
    charges = None
    if charges_full is not None:
        charges = np.zeros(len(keep))
        np.add.at(charges, fold[fold >= 0], charges_full[fold >= 0])

    segments, energies, forces, interactions, label_times = [], [], [], [], []
    reference = None
    for f, traj in zip(files, trajs):
        xyz = traj.xyz[:, keep].astype(np.float64) * 10.0
        if reference is None:
            reference = xyz[0, ca]
        rot, trans = superposition(xyz[:, ca], reference)
        segments.append((np.einsum("fij,faj->fai", rot, xyz) + trans[:, None]).astype(np.float32))
        found = _read_energies(f, traj.n_frames, top)
        if found is None:
            energies.append(None)
            forces.append(None)
            interactions.append(None)
            label_times.append(None)
            continue
        energy, raw = found["energy"], found["forces"]
        energies.append(energy)
        interactions.append(found["interaction"])
        label_times.append(found["times"])
        folded = np.zeros((raw.shape[0], len(keep), 3))
        np.add.at(folded, (slice(None), fold[fold >= 0]), raw[:, fold >= 0])
        forces.append(np.einsum("fij,faj->fai", rot, folded).astype(np.float32))
        log.info("%s: energies and forces from %s", f, f.parent / ENERGY_FILE)
    timestep = frame_spacing(files, [t.time for t in trajs], label_times, timestep_ps)
    return MDSystem(topology=sub_top, segments=segments, timestep_ps=timestep,
                    ligand=new_index[lig_full[new_index[lig_full] >= 0]], source_index=keep,
                    energies=energies, forces=forces, interactions=interactions, charges=charges, files=[str(f) for f in files],
                    full_topology=top, full_ligand=lig_full, full_first_frame=trajs[0].xyz[0] * 10.0,
                    full_charges=charges_full)


def inspect_system(topology: str | Path, trajectories: list[str | Path], ligand: str | None = None,
                   hydrogens: bool = False, timestep_ps: float | None = None,
                   forcefield: list[str] | None = None, truncated: str = "error") -> dict:
    """A JSON-ready summary of a system (what ``hemeplm inspect`` prints): ``n_atoms_input`` atoms in the
    topology, ``n_atoms`` of them kept for the model (protein and ligand; heavy atoms unless ``hydrogens``)."""
    system = load_system(topology, trajectories, ligand=ligand, hydrogens=hydrogens, timestep_ps=timestep_ps,
                         forcefield=forcefield, truncated=truncated)
    top = system.topology
    lig_atoms = [top.atom(int(i)) for i in system.ligand]
    elements: dict[str, int] = {}
    for a in lig_atoms:
        sym = a.element.symbol if a.element is not None else "X"
        elements[sym] = elements.get(sym, 0) + 1
    residues = []
    for a in lig_atoms:
        if not residues or residues[-1][0] != a.residue.index:
            residues.append((a.residue.index, a.residue.name))
    return {
        "topology": str(topology),
        "trajectories": system.files,
        "n_atoms": system.n_atoms,
        "n_atoms_input": system.full_topology.n_atoms,
        "n_frames": int(sum(len(s) for s in system.segments)),
        "n_segments": len(system.segments),
        "segment_frames": [len(s) for s in system.segments],
        "n_residues": int(sum(1 for r in top.residues if r.is_protein)),
        "timestep_ps": round(system.timestep_ps, 6),
        "hydrogens": hydrogens,
        "has_energies": all(e is not None for e in system.energies),
        "has_charges": system.charges is not None,
        "ligand": {"n_atoms": len(lig_atoms), "residues": [name for _, name in residues],
                   "elements": dict(sorted(elements.items()))},
    }
