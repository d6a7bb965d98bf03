"""Property-based tests of the loaders and the featuriser on random valid and invalid inputs.

Every input either loads, giving finite arrays, or raises
:class:`~hemeplm.errors.HemeplmError`, the one documented error type; no other
exception (and no NaN) may escape. The inputs start from a small real system
(the first residues of T4 lysozyme plus p-xylene) and are mangled: random
residue names, missing and renamed atoms, duplicate names, ligand selections
that match nothing or do not parse, huge or degenerate coordinates, truncated
and random-byte files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PDB, write_dcd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hemeplm.data.dataset import DataConfig, build_features
from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

AMINO = ["ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET", "PHE", "PRO",
         "SER", "THR", "TRP", "TYR", "VAL", "HID", "CYX"]
OTHER = ["TMP", "HEM", "HOH", "WAT", "NA", "CL", "UNK", "LIG", "XYZ", "SOL"]
resnames = st.sampled_from(AMINO + OTHER) | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=3)
atom_names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'", min_size=1, max_size=4)
selections = st.one_of(
    st.none(),
    st.sampled_from(["none", "resname TMP", "resname XYZ", "name CA", "resid 0 to 2", "resname TMP and element C",
                     "protein", "all", "water", "", "resname ((", "index 99999", "element Fe"]),
    st.text("abcdefghijklmnopqrstuvwxyz ()=<>0123456789", max_size=20),
)


def _base_atoms(n_residues: int = 4) -> list[dict]:
    """The atoms of the first residues of complex.pdb and of the ligand, as dicts."""
    atoms = []
    for line in PDB.read_text().splitlines():
        if not line.startswith(("ATOM", "HETATM")):
            continue
        resseq = int(line[22:26])
        if resseq <= n_residues or line[17:20] == "TMP":
            atoms.append({"name": line[12:16].strip(), "resname": line[17:20].strip(), "chain": line[21],
                          "resseq": resseq, "xyz": [float(line[30:38]), float(line[38:46]), float(line[46:54])],
                          "element": line[76:78].strip()})
    return atoms


BASE = _base_atoms()
RESIDUES = sorted({a["resseq"] for a in BASE})


def pdb_text(atoms: list[dict]) -> str:
    lines = []
    for i, a in enumerate(atoms, 1):
        name = a["name"] if len(a["name"]) == 4 else f" {a['name']:<3}"
        x, y, z = (float(np.clip(v, -999.0, 9999.0)) for v in a["xyz"])
        lines.append(f"ATOM  {i:5d} {name:4s} {a['resname']:>3s} {a['chain']}{a['resseq']:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {a['element']:>2s}")
    return "\n".join(lines + ["END", ""])


@st.composite
def mangled_atoms(draw) -> list[dict]:
    """BASE with random residue names, atoms dropped, atoms renamed (often to a duplicate) and coordinates moved."""
    atoms = [dict(a, xyz=list(a["xyz"])) for a in BASE]
    for seq in draw(st.sets(st.sampled_from(RESIDUES), max_size=3)):
        name = draw(resnames)
        for a in atoms:
            if a["resseq"] == seq:
                a["resname"] = name
    for i in draw(st.sets(st.integers(0, len(atoms) - 1), max_size=4)):
        same_residue = [b["name"] for b in atoms if b["resseq"] == atoms[i]["resseq"]]
        atoms[i]["name"] = draw(st.sampled_from(same_residue) | atom_names)
    scale = draw(st.sampled_from([1.0, 1.0, 0.0, 1e-3, 30.0]))
    centre = np.mean([a["xyz"] for a in atoms], axis=0)
    for a in atoms:
        a["xyz"] = list(centre + scale * (np.asarray(a["xyz"]) - centre))
    dropped = draw(st.sets(st.integers(0, len(atoms) - 1), max_size=len(atoms) // 3))
    return [a for i, a in enumerate(atoms) if i not in dropped]


def assert_finite(obj, where: str = "features") -> None:
    """Every float array (and tensor) inside ``obj`` is finite."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert_finite(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_finite(v, f"{where}[{i}]")
    elif hasattr(obj, "dtype") and np.issubdtype(np.asarray(obj).dtype, np.floating):
        assert np.isfinite(np.asarray(obj)).all(), f"{where} is not finite"


def _reason(exc: HemeplmError) -> str:
    """The gist of an error, for hypothesis' statistics (``--hypothesis-show-statistics``)."""
    msg = str(exc).split(": ", 1)[-1] if exc.path else str(exc)
    return " ".join(msg.split()[:4])


def loads_or_hemeplm_error(topology: Path, trajectories: list[Path], ligand: str | None,
                           hydrogens: bool = False) -> None:
    """load_system and build_features succeed with finite arrays, or raise HemeplmError."""
    try:
        system = load_system(topology, trajectories, ligand=ligand, hydrogens=hydrogens)
    except HemeplmError as exc:
        event(f"load_system: {_reason(exc)}")
        return
    assert_finite(system.segments, "segments")
    try:
        feats = build_features(DataConfig(topology=str(topology), trajectories=[str(t) for t in trajectories],
                                          ligand=ligand, hydrogens=hydrogens))
    except HemeplmError as exc:
        event(f"build_features: {_reason(exc)}")
        return
    assert_finite(feats)
    assert feats["n_atoms"] == system.n_atoms
    event("featurised")


@FUZZ
@given(atoms=mangled_atoms(), ligand=selections, hydrogens=st.booleans())
def test_mangled_pdb_loads_or_raises_hemeplm_error(atoms, ligand, hydrogens):
    with tempfile.TemporaryDirectory() as tmp:
        pdb = Path(tmp) / "mangled.pdb"
        pdb.write_text(pdb_text(atoms))
        loads_or_hemeplm_error(pdb, [], ligand, hydrogens)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # 3e38 nm does not fit a float32 in Å: inf on purpose
@FUZZ
@given(frames=st.integers(1, 6),
       value=st.sampled_from([1e4, 1e8, 1e20, 3e38, -3e38, 0.0, 1e-30]),
       n_bad=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_huge_or_degenerate_coordinates_load_or_raise(frames, value, n_bad, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        pdb = Path(tmp) / "base.pdb"
        pdb.write_text(pdb_text(BASE))
        xyz = np.asarray([a["xyz"] for a in BASE]) / 10.0
        xyz = np.repeat(xyz[None], frames, axis=0) + rng.normal(scale=0.01, size=(frames, *xyz.shape))
        idx = rng.integers(0, xyz.size, size=n_bad)
        xyz.reshape(-1)[idx] = value
        if value == 0.0 and n_bad:
            xyz[:] = 0.0  # every atom on one point
        dcd = write_dcd(Path(tmp) / "traj.dcd", xyz)
        loads_or_hemeplm_error(pdb, [dcd], "resname TMP")


TOPOLOGY_SUFFIXES = [".pdb", ".pdb.gz", ".psf", ".prmtop", ".gro", ".h5"]
TRAJECTORY_SUFFIXES = [".dcd", ".xtc", ".trr", ".nc", ".h5", ".pdb", ".gro"]
DCD_HEADER = (84).to_bytes(4, "little") + b"CORD"
XTC_HEADER = (1995).to_bytes(4, "big")


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(TOPOLOGY_SUFFIXES))
def test_random_bytes_as_topology_raise_hemeplm_error(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / f"top{suffix}"
        top.write_bytes(data)
        with pytest.raises(HemeplmError):
            load_system(top, [])


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(TRAJECTORY_SUFFIXES),
       header=st.sampled_from([b"", DCD_HEADER, XTC_HEADER]))
def test_random_bytes_as_trajectory_raise_hemeplm_error(data, suffix, header):
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "base.pdb"
        top.write_text(pdb_text(BASE))
        traj = Path(tmp) / f"traj{suffix}"
        traj.write_bytes(header + data)
        with pytest.raises(HemeplmError):
            load_system(top, [traj])


@FUZZ
@given(keep=st.floats(0.0, 1.0), noise=st.binary(max_size=64), fmt=st.sampled_from(["dcd", "xtc"]),
       truncated=st.sampled_from(["error", "warn"]))
def test_cut_or_damaged_trajectory_loads_or_raises(keep, noise, fmt, truncated):
    """A real trajectory cut anywhere, or with random bytes appended: whole frames or a HemeplmError."""
    import mdtraj

    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "base.pdb"
        top.write_text(pdb_text(BASE))
        whole = Path(tmp) / f"whole.{fmt}"
        ref = mdtraj.load(str(top))
        mdtraj.Trajectory(np.repeat(ref.xyz, 4, axis=0), ref.topology).save(str(whole))
        data = whole.read_bytes()
        damaged = Path(tmp) / f"damaged.{fmt}"
        damaged.write_bytes(data[: int(keep * len(data))] + noise)
        try:
            system = load_system(top, [damaged], truncated=truncated)
        except HemeplmError:
            return
        assert 1 <= len(system.segments[0]) <= 4
        assert_finite(system.segments, "segments")


@FUZZ
@given(kind=st.sampled_from(["bytes", "cut", "shape", "nan", "good"]), data=st.binary(max_size=500),
       keep=st.floats(0.0, 1.0))
def test_damaged_energy_file_loads_or_raises(kind, data, keep):
    """energies_forces.npz beside the trajectory: random bytes, cut short, wrong shapes, NaN, or fine."""
    import io

    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "base.pdb"
        top.write_text(pdb_text(BASE))
        n_frames, n_atoms = 3, len(BASE)
        xyz = np.repeat(np.asarray([a["xyz"] for a in BASE])[None] / 10.0, n_frames, axis=0)
        dcd = write_dcd(Path(tmp) / "traj.dcd", xyz)
        energy, forces = np.zeros(n_frames), np.zeros((n_frames, n_atoms, 3))
        if kind == "shape":
            forces = forces[:, :-1]
        if kind == "nan":
            energy[1] = np.nan
        buf = io.BytesIO()
        np.savez(buf, energy_kcal_mol=energy, forces_kcal_mol_A=forces)
        content = {"bytes": data, "cut": buf.getvalue()[: int(keep * len(buf.getvalue()))]}.get(kind, buf.getvalue())
        (Path(tmp) / "energies_forces.npz").write_bytes(content)
        try:
            system = load_system(top, [dcd], ligand="resname TMP")
        except HemeplmError as exc:
            event(f"{kind}: {_reason(exc)}")
            return
        event(f"{kind}: loaded, energies {'used' if system.energies[0] is not None else 'not used'}")
        assert kind in ("good", "shape", "cut")
        assert system.energies[0] is None or (np.isfinite(system.energies[0]).all()
                                               and np.isfinite(system.forces[0]).all())
