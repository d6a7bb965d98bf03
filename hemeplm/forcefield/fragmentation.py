"""AI2BMD-style fragmentation of a peptide: capped dipeptides recombined with overlap subtraction.

As in AI2BMD (Wang et al., Nature 2024), a chain of residues 0..n−1 is cut into one ACE-X-NME unit per
residue: residue i with the Cα (and its hydrogens), C and O of residue i−1 as the acetyl cap and the N,
H and Cα (with its hydrogens) of residue i+1 as the N-methylamide cap. Neighbouring units overlap in an
ACE-NME unit (N-methylacetamide: Cα, C, O of residue i and N, H, Cα of residue i+1), which is
subtracted::

    E ≈ Σ_i E(ACE-X_i-NME) − Σ_i E(ACE-NME_{i,i+1})

This is inclusion–exclusion over the atom sets (the Cα-H group shared by units i−1 and i+1 enters
once with each sign and cancels), so every atom and every covalent bond is counted exactly once.
Bonds cut at a fragment's edge are capped by a hydrogen on the bond (1.09 Å from carbon, 1.01 Å
from nitrogen); the force on such a link atom is passed to the two atoms of the cut bond by the
chain rule. Each unit carries the formal charge of its residue (termini included), the overlaps
none.

What the fragments leave out is every interaction between atoms that share no fragment (residues
two or more apart). ``long_range="mm"`` adds them as the force field's vacuum Coulomb + Lennard-Jones
pair energies (Amber14 charges, as AI2BMD adds its MM long-range part); ``None`` leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hemeplm.data.molecules import amber14_system, residue_charges
from hemeplm.data.parameters import COULOMB_KCAL_A, coulomb_lj, pair_parameters
from hemeplm.forcefield.qm import GFN2, check_spin

LINK_LENGTH = {6: 1.09, 7: 1.01, 8: 0.96}  # Å, X-H bond of a link atom on element X
ACE_PART = ("CA", "HA", "HA2", "HA3", "C", "O")
NME_PART = ("N", "H", "CA", "HA", "HA2", "HA3")


@dataclass
class Fragment:
    """One fragment: real atoms, link atoms, charge and its sign in the sum.

    Attributes:
        name: e.g. ``ACE-TYR2-NME`` or ``ACE-NME 2/3``.
        atoms: (N,) indices of the molecule's atoms it holds.
        links: (K, 2) cut bonds ``(inside, outside)``, each capped by a hydrogen.
        charge: formal charge (e); sign: +1 (unit) or −1 (overlap).
    """

    name: str
    atoms: np.ndarray
    links: np.ndarray
    charge: int
    sign: int
    numbers: np.ndarray = field(default=None)


def _links(atoms: set[int], bonds: list[tuple[int, int]]) -> np.ndarray:
    out = [(a, b) for a, b in bonds if a in atoms and b not in atoms]
    out += [(b, a) for a, b in bonds if b in atoms and a not in atoms]
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)


def fragments(topology, numbers: np.ndarray, charges: np.ndarray | None = None) -> list[Fragment]:
    """The ACE-X-NME units and ACE-NME overlaps of a one-chain peptide (mdtraj Topology).

    Args:
        numbers: (A,) atomic numbers; charges: (R,) formal charge per residue (unset: Amber14's).
    """
    residues = list(topology.residues)
    charges = residue_charges(topology) if charges is None else np.asarray(charges)
    bonds = [(a.index, b.index) for a, b in topology.bonds]

    def part(r: int, names: tuple[str, ...]) -> set[int]:
        return {a.index for a in residues[r].atoms if a.name in names}

    sets = []
    for i, res in enumerate(residues):
        s = {a.index for a in res.atoms}
        if i > 0:
            s |= part(i - 1, ACE_PART)
        if i < len(residues) - 1:
            s |= part(i + 1, NME_PART)
        sets.append(s)
    out = []
    for i, s in enumerate(sets):
        out.append(Fragment(f"ACE-{residues[i].name}{i + 1}-NME", np.array(sorted(s)), _links(s, bonds),
                            int(charges[i]), +1))
    for i in range(len(sets) - 1):
        s = sets[i] & sets[i + 1]
        out.append(Fragment(f"ACE-NME {i + 1}/{i + 2}", np.array(sorted(s)), _links(s, bonds), 0, -1))
    for f in out:
        f.numbers = np.concatenate([numbers[f.atoms], np.ones(len(f.links), dtype=numbers.dtype)])
        check_spin(f.numbers, f.charge, 1)
    return out


def link_positions(x: np.ndarray, links: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """(K, 3) link hydrogens on the cut bonds ``links`` (K, 2) of positions ``x`` (A, 3) Å."""
    if not len(links):
        return np.zeros((0, 3))
    a, b = x[links[:, 0]], x[links[:, 1]]
    d = np.array([LINK_LENGTH.get(int(z), 1.09) for z in numbers[links[:, 0]]])
    u = (b - a) / np.linalg.norm(b - a, axis=-1, keepdims=True)
    return a + d[:, None] * u


def link_forces(x: np.ndarray, links: np.ndarray, numbers: np.ndarray, f_link: np.ndarray,
                out: np.ndarray, sign: float) -> None:
    """Add ``sign`` × the link hydrogens' forces (K, 3) to the atoms of their cut bonds in ``out`` (A, 3):
    for L = a + d·u, u = (b − a)/r, ∂L/∂b = (d/r)(I − u uᵀ) = J and ∂L/∂a = I − J."""
    if not len(links):
        return
    a, b = x[links[:, 0]], x[links[:, 1]]
    r = np.linalg.norm(b - a, axis=-1)
    u = (b - a) / r[:, None]
    d = np.array([LINK_LENGTH.get(int(z), 1.09) for z in numbers[links[:, 0]]])
    j = (d / r)[:, None, None] * (np.eye(3)[None] - u[:, :, None] * u[:, None, :])
    to_b = np.einsum("kij,kj->ki", j, f_link)
    np.add.at(out, links[:, 1], sign * to_b)
    np.add.at(out, links[:, 0], sign * (f_link - to_b))


class Fragmented:
    """GFN2-xTB energy and forces of a peptide by fragmentation (module docstring).

    Args:
        topology: mdtraj Topology (one chain); numbers: (A,) atomic numbers.
        long_range: None or ``"mm"`` (Amber14 vacuum Coulomb + LJ between atoms that share no fragment).

    ``frag(x (A, 3) Å)`` returns (energy kcal/mol, forces (A, 3) kcal/mol/Å).
    """

    def __init__(self, topology, numbers: np.ndarray, long_range: str | None = None):
        self.numbers = np.asarray(numbers)
        system = amber14_system(topology)
        self.parts = fragments(topology, self.numbers, residue_charges(topology, system))
        self.calcs = [GFN2(f.numbers, f.charge) for f in self.parts]
        self.pairs = None
        if long_range == "mm":
            self.pairs = self._uncovered_pairs(pair_parameters(system))

    def _uncovered_pairs(self, p):
        """(i, j, qq, σ, ε) of the atom pairs that no fragment holds, from Amber14's :class:`PairParameters` ``p``."""
        n = len(self.numbers)
        covered = np.zeros((n, n), dtype=bool)
        for f in self.parts:
            covered[np.ix_(f.atoms, f.atoms)] = True
        i, j = np.nonzero(np.triu(~covered, 1))
        return i, j, p.charge[i] * p.charge[j], 0.5 * (p.sigma[i] + p.sigma[j]), np.sqrt(p.epsilon[i] * p.epsilon[j])

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        energy, forces = 0.0, np.zeros_like(x)
        for f, calc in zip(self.parts, self.calcs):
            pos = np.concatenate([x[f.atoms], link_positions(x, f.links, self.numbers)])
            e, g = calc(pos)
            energy += f.sign * e
            np.add.at(forces, f.atoms, f.sign * g[:len(f.atoms)])
            link_forces(x, f.links, self.numbers, g[len(f.atoms):], forces, f.sign)
        if self.pairs is not None:
            e, g = self.long_range(x)
            energy += e
            forces += g
        return energy, forces

    def long_range(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Vacuum Coulomb + Lennard-Jones of the uncovered pairs (``long_range="mm"``): energy and forces (A, 3)."""
        i, j, qq, sigma, eps = self.pairs
        if not len(i):
            return 0.0, np.zeros_like(x)
        rij = x[j] - x[i]
        r = np.linalg.norm(rij, axis=-1)
        e = coulomb_lj(qq, sigma, eps, r)
        s6 = (sigma / r) ** 6
        de = -COULOMB_KCAL_A * qq / r ** 2 + 4.0 * eps * (-12.0 * s6 * s6 + 6.0 * s6) / r
        f_j = -(de / r)[:, None] * rij
        forces = np.zeros_like(x)
        np.add.at(forces, j, f_j)
        np.add.at(forces, i, -f_j)
        return float(e.sum()), forces
