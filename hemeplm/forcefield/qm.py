"""Quantum-chemical labels: GFN2-xTB energies and forces with tblite.

GFN2-xTB (Bannwarth, Ehlert & Grimme 2019) is a semi-empirical tight-binding method: a few
milliseconds for a small molecule on one CPU core, a fraction of a second for a 100-atom
peptide. Here it is run in vacuum for a whole molecule with a given total charge and spin
multiplicity. Energies are in kcal/mol and forces in kcal/mol/Å (tblite works in Hartree and
Bohr); an SCF that does not converge, or atoms too close to compute, is a :class:`GFN2Failure`
for that frame alone.

``hemeplm label --level gfn2`` calls :func:`gfn2_frames` on every frame of a trajectory.
"""

from __future__ import annotations

import logging

import numpy as np

from hemeplm.errors import HemeplmError

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
    :class:`GFN2Failure`.
    """

    def __init__(self, numbers: np.ndarray, charge: int = 0, multiplicity: int = 1, accuracy: float = 1.0,
                 max_iter: int = 250, reuse_guess: bool = False):
        self.numbers = np.asarray(numbers, dtype=np.int32)
        self.charge, self.uhf = int(charge), check_spin(self.numbers, charge, multiplicity)
        self.accuracy, self.max_iter, self.reuse_guess = accuracy, max_iter, reuse_guess
        self._calc = None
        self._result = None

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
