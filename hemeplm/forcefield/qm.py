"""Quantum-chemical labels: GFN2-xTB energies and forces with tblite.

GFN2-xTB (Bannwarth, Ehlert & Grimme 2019) is a semi-empirical tight-binding method: a few
milliseconds for a small molecule on one CPU core, a fraction of a second for a 100-atom
peptide. Here it is run in vacuum for a whole molecule with a given total charge and spin
multiplicity. Energies are in kcal/mol and forces in kcal/mol/Å (tblite works in Hartree and
Bohr); an SCF that does not converge, or atoms too close to compute, is a :class:`GFN2Failure`
for that frame alone.

``hemeplm label --level gfn2`` calls :func:`gfn2_frames` on every frame of a trajectory;
``hemeplm dataset`` (:func:`make_dataset`) samples a molecule of :mod:`hemeplm.data.molecules`
(GFN2-xTB Langevin dynamics for small molecules, Amber14/OBC2 dynamics for peptides) and labels it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from hemeplm.data.load import ENERGY_FILE
from hemeplm.data.molecules import DATASET_FILES, PEPTIDES, SPLITS, build_molecule, time_blocks
from hemeplm.errors import HemeplmError
from hemeplm.io import atomic_write_bytes, check_outputs

log = logging.getLogger(__name__)

HARTREE_KCAL = 627.5094740631  # kcal/mol per Hartree (CODATA 2018)
BOHR_A = 0.529177210903  # Å per Bohr (CODATA 2018)


class GFN2Failure(RuntimeError):
    """GFN2-xTB gave no result for one geometry (SCF not converged, atoms too close, ...)."""


def check_spin(numbers: np.ndarray, charge: int, multiplicity: int) -> int:
    """Unpaired electrons (multiplicity − 1) for atoms ``numbers`` (A,) with total ``charge``.

    Raises:
        HemeplmError: when the electron count cannot have that multiplicity (parity), or the
            multiplicity is below 1.
    """
    if multiplicity < 1:
        raise HemeplmError(f"the spin multiplicity must be at least 1, got {multiplicity}")
    electrons = int(np.sum(numbers)) - int(charge)
    unpaired = multiplicity - 1
    if electrons < 0 or unpaired > electrons or (electrons - unpaired) % 2:
        raise HemeplmError(f"{electrons} electrons (charge {charge:+d}) cannot have spin multiplicity {multiplicity}"
                           f"; use {1 if electrons % 2 == 0 else 2} (or the right --charge)")
    return unpaired


class GFN2:
    """GFN2-xTB energy and forces of one molecule (atomic numbers fixed, positions per call).

    Args:
        numbers: (A,) atomic numbers.
        charge: total charge (e); ``multiplicity``: 2S + 1.
        accuracy: tblite's numerical accuracy (1.0 its default; smaller is tighter).
        max_iter: SCF iterations before a frame counts as failed.
        reuse_guess: start each SCF from the previous frame's wavefunction (faster along an MD
            trajectory; the result agrees with a fresh start to the SCF tolerance).

    ``gfn2(positions (A, 3) Å)`` returns (energy kcal/mol, forces (A, 3) kcal/mol/Å) or raises
    :class:`GFN2Failure`; ``gfn2.charges`` then holds that geometry's atomic partial charges (A,) e (GFN2-xTB's
    Mulliken charges).
    """

    def __init__(self, numbers: np.ndarray, charge: int = 0, multiplicity: int = 1, accuracy: float = 1.0,
                 max_iter: int = 250, reuse_guess: bool = False):
        self.numbers = np.asarray(numbers, dtype=np.int32)
        self.charge, self.uhf = int(charge), check_spin(self.numbers, charge, multiplicity)
        self.accuracy, self.max_iter, self.reuse_guess = accuracy, max_iter, reuse_guess
        self._calc = None
        self._result = None
        self.charges = None

    def _new(self, bohr: np.ndarray):
        from tblite.interface import Calculator

        calc = Calculator("GFN2-xTB", self.numbers, bohr, self.charge, self.uhf)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iter)
        return calc

    def __call__(self, positions_a: np.ndarray) -> tuple[float, np.ndarray]:
        bohr = np.asarray(positions_a, dtype=np.float64) / BOHR_A
        if not np.isfinite(bohr).all():
            raise GFN2Failure("non-finite coordinates")
        try:
            if self._calc is None:
                self._calc = self._new(bohr)
            else:
                self._calc.update(bohr)
            guess = self._result if self.reuse_guess else None
            res = self._calc.singlepoint(guess) if guess is not None else self._calc.singlepoint()
        except Exception as exc:  # tblite raises TBLiteRuntimeError; the calculator may be left unusable
            self._calc, self._result = None, None
            raise GFN2Failure(" ".join(str(exc).split()) or type(exc).__name__) from exc
        self._result = res if self.reuse_guess else None
        energy = float(res.get("energy")) * HARTREE_KCAL
        forces = -np.asarray(res.get("gradient"), dtype=np.float64) * (HARTREE_KCAL / BOHR_A)
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            self._calc, self._result = None, None
            raise GFN2Failure("non-finite energy or forces")
        self.charges = np.asarray(res.get("charges"), dtype=np.float64)
        return energy, forces


def gfn2_frames(numbers: np.ndarray, positions_a: np.ndarray, charge: int = 0, multiplicity: int = 1,
                progress: bool = True, accuracy: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """GFN2-xTB labels of frames, each computed from scratch (no wavefunction carried over).

    Args:
        numbers: (A,) atomic numbers; positions_a: (F, A, 3) Å.
    Returns:
        energy (F,) kcal/mol, forces (F, A, 3) kcal/mol/Å (NaN for failed frames) and the
        failures as (frame, message).
    """
    from tqdm import tqdm

    gfn2 = GFN2(numbers, charge, multiplicity, accuracy=accuracy)
    energy = np.full(len(positions_a), np.nan)
    forces = np.full(positions_a.shape, np.nan)
    failed = []
    for f in tqdm(range(len(positions_a)), desc="GFN2-xTB", unit="frame", disable=not progress):
        try:
            energy[f], forces[f] = gfn2(positions_a[f])
        except GFN2Failure as exc:
            log.warning("frame %d: GFN2-xTB failed: %s", f, exc)
            failed.append((f, str(exc)))
    return energy, forces, failed


# ----------------------------------------------------------------------------- sampling
KB_KCAL = 0.0019872041  # kcal/mol/K
ACCEL = 4.184e-4  # (kcal/mol/Å)/amu in Å/fs²


def gfn2_langevin(gfn2: GFN2, masses: np.ndarray, x0: np.ndarray, temperature: float, n_frames: int, stride: int,
                  equilibration: int, dt_fs: float = 0.5, friction_ps: float = 5.0, seed: int = 0,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Langevin dynamics on the GFN2-xTB surface (BAOAB splitting, Leimkuhler & Matthews 2013).

    Args:
        gfn2: the molecule's calculator (``reuse_guess`` makes each step cheaper).
        masses: (A,) amu; x0: (A, 3) Å starting positions.
        temperature: K; dt_fs: time step (fs); friction_ps: collision rate (1/ps).
        n_frames, stride, equilibration: ``equilibration`` steps are discarded, then every
            ``stride``-th step's positions are kept, ``n_frames`` of them.
    Returns:
        positions (F, A, 3) Å with their energies (F,) kcal/mol and forces (F, A, 3) kcal/mol/Å: the
        evaluations the dynamics made at exactly those positions (the labels).

    Raises:
        HemeplmError: when GFN2-xTB fails twice in a row (a fresh SCF after the first failure).
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    m = np.asarray(masses, dtype=np.float64)[:, None]
    kt = KB_KCAL * temperature
    sigma_v = np.sqrt(kt * ACCEL / m)  # Å/fs
    c1 = np.exp(-friction_ps * 1e-3 * dt_fs)
    c2 = np.sqrt(1.0 - c1 * c1)
    x = np.asarray(x0, dtype=np.float64).copy()
    v = rng.normal(size=x.shape) * sigma_v

    def evaluate(pos):
        try:
            return gfn2(pos)
        except GFN2Failure:
            try:
                return gfn2(pos)  # the calculator was reset: a fresh SCF
            except GFN2Failure as exc:
                raise HemeplmError(f"GFN2-xTB dynamics at {temperature:g} K stopped: {exc}") from exc

    e, f = evaluate(x)
    total = equilibration + n_frames * stride
    pos_out = np.zeros((n_frames, *x.shape))
    e_out = np.zeros(n_frames)
    f_out = np.zeros((n_frames, *x.shape))
    for step in tqdm(range(1, total + 1), desc=f"GFN2-xTB MD {temperature:g} K", unit="step", disable=not progress,
                     mininterval=2.0):
        v += 0.5 * dt_fs * ACCEL * f / m
        x += 0.5 * dt_fs * v
        v = c1 * v + c2 * sigma_v * rng.normal(size=x.shape)
        x += 0.5 * dt_fs * v
        e, f = evaluate(x)
        v += 0.5 * dt_fs * ACCEL * f / m
        k = step - equilibration
        if k > 0 and k % stride == 0:
            i = k // stride - 1
            pos_out[i], e_out[i], f_out[i] = x, e, f
    return pos_out, e_out, f_out


def openmm_langevin(topology, x0: np.ndarray, temperature: float, n_frames: int, stride: int, equilibration: int,
                    dt_fs: float = 1.0, friction_ps: float = 1.0, seed: int = 0, progress: bool = True) -> np.ndarray:
    """Amber14 (ff14SB) + OBC2 implicit solvent Langevin dynamics of a peptide, no constraints (bonds to
    hydrogen vibrate, as GFN2-xTB's will); minimised first. Returns (F, A, 3) Å, every ``stride``-th
    step after ``equilibration`` steps."""
    import openmm
    from openmm import app, unit
    from tqdm import tqdm

    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = ff.createSystem(topology.to_openmm(), nonbondedMethod=app.NoCutoff, constraints=None)
    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction_ps / unit.picosecond,
                                            dt_fs * unit.femtosecond)
    integ.setRandomNumberSeed(seed + 1)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    ctx.setPositions(np.asarray(x0) / 10.0)
    openmm.LocalEnergyMinimizer.minimize(ctx)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 1)
    integ.step(equilibration)
    out = np.zeros((n_frames, len(x0), 3))
    for i in tqdm(range(n_frames), desc=f"Amber14/OBC2 MD {temperature:g} K", unit="frame", disable=not progress,
                  mininterval=2.0):
        integ.step(stride)
        out[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    return out


#: sampling defaults: small molecules by GFN2-xTB MD (0.5 fs steps), peptides by Amber14/OBC2 MD (1 fs)
SAMPLING = {
    "small": {"temperatures": (300.0, 600.0), "frames": 1000, "stride": 10, "equilibration": 1000, "dt_fs": 0.5},
    "alanine-dipeptide": {"temperatures": (300.0, 450.0), "frames": 500, "stride": 500, "equilibration": 10000,
                          "dt_fs": 1.0},
    "chignolin": {"temperatures": (300.0, 450.0), "frames": 60, "stride": 1000, "equilibration": 10000,
                  "dt_fs": 1.0},
}


PEPTIDE_SAMPLING = ("Amber14 (ff14SB) + OBC2 implicit solvent Langevin (friction 1/ps), no constraints; labels "
                    "computed afterwards, each SCF from scratch")
SPLIT_TEXT = "contiguous time blocks of each run: first 80% train, next 10% val, last 10% test"


def sampling_defaults(name: str) -> dict:
    """The sampling settings of molecule ``name`` (:data:`SAMPLING`)."""
    return dict(SAMPLING.get(name, SAMPLING["small"]))


def make_dataset(name: str, out: str | Path, temperatures: tuple[float, ...] | None = None, frames: int | None = None,
                 stride: int | None = None, equilibration: int | None = None, seed: int = 0, force: bool = False,
                 progress: bool = True) -> Path:
    """Build molecule ``name``, sample it at each temperature, label with GFN2-xTB and write a data set
    (:mod:`hemeplm.data.molecules` describes the files; what ``hemeplm dataset`` does).

    Small molecules run GFN2-xTB Langevin dynamics (:func:`gfn2_langevin`), whose own evaluations are
    the labels; peptides run Amber14/OBC2 dynamics (:func:`openmm_langevin`) and every kept frame is
    then labelled by GFN2-xTB from scratch (a frame it cannot compute is left out and listed in
    ``dataset.json``). Each run (temperature) is split into contiguous time blocks, the first 80 %
    train, the next 10 % val, the last 10 % test. ``dataset.json`` records the settings and the cost
    in seconds (build, sampling, labelling) with the thread count. Unset arguments take
    :func:`sampling_defaults`. Returns ``out``.
    """
    import time

    out = Path(out)
    paths = [out / f for f in DATASET_FILES]
    check_outputs(paths, force, out)
    plan = sampling_plan(sampling_defaults(name), temperatures=temperatures, frames=frames, stride=stride,
                         equilibration=equilibration)
    t0 = time.perf_counter()
    mol = build_molecule(name, seed)
    check_spin(mol.numbers, mol.charge, 1)
    masses = np.array([a.element.mass for a in mol.topology.atoms])
    cost = {"build": time.perf_counter() - t0, "sampling": 0.0, "labelling": 0.0}
    peptide = name in PEPTIDES
    runs = []
    failed_all = []
    for r, temp in enumerate(plan["temperatures"]):
        run_seed = seed * 1000 + r
        t = time.perf_counter()
        if peptide:
            pos = openmm_langevin(mol.topology, mol.positions, temp, plan["frames"], plan["stride"],
                                  plan["equilibration"], plan["dt_fs"], seed=run_seed, progress=progress)
            cost["sampling"] += time.perf_counter() - t
            t = time.perf_counter()
            run, failed = labelled_run(mol.numbers, pos, mol.charge, r, temp, plan, progress)
            cost["labelling"] += time.perf_counter() - t
            runs.append(run)
            failed_all += failed
        else:
            gfn2 = GFN2(mol.numbers, mol.charge, reuse_guess=True)
            pos, energy, forces = gfn2_langevin(gfn2, masses, mol.positions, temp, plan["frames"], plan["stride"],
                                                plan["equilibration"], plan["dt_fs"], seed=run_seed,
                                                progress=progress)
            cost["sampling"] += time.perf_counter() - t  # sampling and labelling are the same evaluations
            runs.append(sampling_run(pos, energy, forces, np.arange(len(pos)), r, temp, plan))
    meta = {"molecule": name, "source": mol.source, "n_atoms": int(len(mol.numbers)), "charge": int(mol.charge),
            "multiplicity": 1, "labels": "GFN2-xTB (tblite), vacuum, kcal/mol and kcal/mol/Å",
            "sampling": ("GFN2-xTB Langevin (BAOAB, friction 5/ps); labels are the dynamics' own evaluations "
                         "(SCF restarted from the previous step)") if not peptide else PEPTIDE_SAMPLING,
            **plan_meta(plan, seed), "split": SPLIT_TEXT, "failed_frames": failed_all,
            "cost_s": {k: round(v, 1) for k, v in {**cost, "total": time.perf_counter() - t0}.items()},
            **provenance()}
    write_dataset(out, mol.topology, runs, meta)
    log.info("%s: %s, %d frames, %.0f s", out, name, sum(meta["split_counts"].values()), meta["cost_s"]["total"])
    return out


def provenance() -> dict:
    """``machine`` (cores and OMP_NUM_THREADS) and ``versions`` of the sampling and labelling packages, for
    dataset.json."""
    import os
    from importlib.metadata import version

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return {"machine": f"{os.cpu_count()} CPU cores (shared), OMP_NUM_THREADS={threads}",
            "versions": {p: version(p) for p in ("tblite", "openmm", "rdkit", "PeptideBuilder")}}


def sampling_plan(defaults: dict, **given) -> dict:
    """The sampling settings: ``defaults`` (:data:`SAMPLING`'s keys) with every ``given`` value that is not None."""
    return {**defaults, **{k: v for k, v in given.items() if v is not None}}


def plan_meta(plan: dict, seed: int) -> dict:
    """A sampling plan's settings as dataset.json records them."""
    return {"temperatures_K": [float(t) for t in plan["temperatures"]], "frames_per_run": plan["frames"],
            "stride_steps": plan["stride"], "equilibration_steps": plan["equilibration"], "dt_fs": plan["dt_fs"],
            "seed": seed}


def sampling_run(positions: np.ndarray, energy: np.ndarray, forces: np.ndarray, keep: np.ndarray, run: int,
                 temperature: float, plan: dict) -> dict:
    """One sampling run's kept frames (``keep`` of the F sampled every ``plan["stride"]`` steps) as
    :func:`write_dataset` takes them, split into contiguous time blocks."""
    frame_ps = plan["stride"] * plan["dt_fs"] * 1e-3
    return {"positions": positions[keep], "energy": energy[keep], "forces": forces[keep],
            "time_ps": ((np.arange(len(positions)) + 1) * frame_ps)[keep], "split": time_blocks(len(keep)),
            "temperature": np.full(len(keep), float(temperature)), "run": np.full(len(keep), run)}


def labelled_run(numbers: np.ndarray, positions: np.ndarray, charge: int, run: int, temperature: float, plan: dict,
                 progress: bool = True) -> tuple[dict, list[dict]]:
    """GFN2-xTB labels of a sampled run's frames (F, A, 3) Å (:func:`gfn2_frames`): the :func:`sampling_run` of the
    frames it computed, and one ``{"run", "frame", "error"}`` per frame it could not."""
    energy, forces, failed = gfn2_frames(numbers, positions, charge, 1, progress)
    keep = np.setdiff1d(np.arange(len(positions)), [f for f, _ in failed])
    return (sampling_run(positions, energy, forces, keep, run, temperature, plan),
            [{"run": run, "frame": int(f), "error": msg} for f, msg in failed])


def write_dataset(out: Path, topology, runs: list[dict], meta: dict) -> None:
    """Write a data set folder (:data:`~hemeplm.data.molecules.DATASET_FILES`) from its sampling runs
    (:func:`sampling_run`) and ``meta`` (dataset.json, to which the split counts are added), each file atomically."""
    import mdtraj

    cat = {k: np.concatenate([run[k] for run in runs]) for k in runs[0]}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".traj.tmp.dcd"
    with mdtraj.formats.DCDTrajectoryFile(str(tmp), "w", force_overwrite=True) as fh:
        fh.write(cat["positions"].astype(np.float32))
    tmp.replace(out / "traj.dcd")
    mdtraj.Trajectory((cat["positions"][:1] / 10.0).astype(np.float32), topology).save_pdb(
        str(out / ".topology.tmp.pdb"))
    (out / ".topology.tmp.pdb").replace(out / "topology.pdb")
    buf = io.BytesIO()
    np.savez_compressed(buf, energy_kcal_mol=cat["energy"], forces_kcal_mol_A=cat["forces"].astype(np.float32),
                        time_ps=cat["time_ps"], temperature_K=cat["temperature"], run=cat["run"].astype(np.int16),
                        split=cat["split"].astype(np.int8))
    atomic_write_bytes(out / ENERGY_FILE, buf.getvalue())
    meta["split_counts"] = {s: int((cat["split"] == i).sum()) for i, s in enumerate(SPLITS)}
    atomic_write_bytes(out / "dataset.json", json.dumps(meta, indent=2).encode())
