"""What the metrics need to know about a system (:class:`Geometry`), and superposition on protein Cα."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError
from hemeplm.geometry.structure import PEPTIDE_BOND_MAX_A, near_pairs, vdw_radii
from hemeplm.data.residues import TORSION_NAMES, standard_name
from hemeplm.data.tokens import build_layout
from hemeplm.geometry.rigid import superposition


TORSION_TYPES = ("phi", "psi", "chi1", "chi2", "chi3", "chi4")
#: ``bond_ok_fraction_<class>``; :attr:`Geometry.bond_class` indexes this
BOND_CLASSES = ("intra_residue", "peptide", "ligand")
#: Ramachandran residue classes; :attr:`Geometry.rama_class` indexes this
RAMA_CLASSES = ("general", "glycine", "proline")


@dataclass
class Geometry:
    """What the metrics need to know about the system (A kept atoms, R protein residues with a Cα).

    Attributes:
        topology: mdtraj Topology of the kept atoms.
        ca: (R,) Cα atom indices, one per residue.
        residue_labels: (R,) e.g. ``"LEU99"``; residue_numbers: (R,) sequence numbers.
        protein: (P,) protein atom indices; residue_of: (P,) their residue (0..R-1), -1 if it has no Cα.
        ligand: (L,) ligand atom indices; is_ligand: (A,) whether each atom is a ligand atom.
        torsions: (T, 4) atom indices of every defined phi/psi/chi; torsion_type: (T,) their type names.
        bonds: (B, 2) topology bonds (heavy atoms); bond_class: (B,) index into :data:`BOND_CLASSES`
            (0 both atoms in one protein residue, 1 in two protein residues, 2 at least one ligand atom).
        radii: (A,) van der Waals radii in Å, 0 for metals (left out of clash counts).
        excluded: sorted keys ``i * A + j`` (i < j) of 1-2 and 1-3 neighbour pairs.
        ligand_bonds: sorted (i, j) pairs of ligand bonds, in ligand-local indices.
        symbols: (A,) element symbols.
        peptide: (P, 4) atoms CA(i), C(i), N(i+1), CA(i+1) of every peptide bond: a topology bond C(i)-N(i+1)
            no longer than :data:`~hemeplm.geometry.structure.PEPTIDE_BOND_MAX_A` in the first frame (a longer
            one is a chain break the topology bonded anyway).
        rama: (Q, 5) atoms C(i-1), N(i), CA(i), C(i), N(i+1) of every residue with φ and ψ (both across peptide
            bonds); rama_class: (Q,) index into :data:`RAMA_CLASSES` (glycine, proline, every other residue).
        residue_index: (A,) topology residue of every atom.
    """

    topology: object
    ca: np.ndarray
    residue_labels: list[str]
    residue_numbers: np.ndarray
    protein: np.ndarray
    residue_of: np.ndarray
    ligand: np.ndarray
    is_ligand: np.ndarray
    torsions: np.ndarray
    torsion_type: np.ndarray
    bonds: np.ndarray
    bond_class: np.ndarray
    radii: np.ndarray
    excluded: np.ndarray
    ligand_bonds: set
    symbols: list[str]
    peptide: np.ndarray
    rama: np.ndarray
    rama_class: np.ndarray
    residue_index: np.ndarray


def build_geometry(topology, ligand: np.ndarray, first_frame: np.ndarray, path: str | Path = "topology") -> Geometry:
    """:class:`Geometry` of a system loaded by :func:`~hemeplm.data.load.load_system`.

    Args:
        topology: mdtraj Topology of the kept atoms; ligand: (L,) ligand indices;
        first_frame: (A, 3) Å, used by the token layout; path: named in errors.
    """

    n = topology.n_atoms
    lig = set(int(i) for i in ligand)
    ca = np.array([a.index for a in topology.atoms if a.name == "CA" and a.residue.is_protein and a.index not in lig],
                  dtype=np.int64)
    residues = [topology.atom(int(i)).residue for i in ca]
    position = {r.index: k for k, r in enumerate(residues)}
    protein = np.array([i for i in range(n) if i not in lig], dtype=np.int64)
    try:
        layout = build_layout(topology, ligand, first_frame)
    except ValueError as exc:
        raise HemeplmError(str(exc), path) from exc
    cols = [TORSION_NAMES.index(t) for t in TORSION_TYPES]
    quads = layout.torsion_atoms[:, cols]                       # (R', 6, 4)
    defined = (quads >= 0).all(-1)
    kinds = np.broadcast_to(np.array(TORSION_TYPES), defined.shape)
    bonds = np.array([(a.index, b.index) for a, b in topology.bonds], dtype=np.int64).reshape(-1, 2)
    is_ligand = np.zeros(n, dtype=bool)
    is_ligand[np.asarray(ligand, dtype=np.int64)] = True
    residue = np.array([a.residue.index for a in topology.atoms], dtype=np.int64)
    bond_class = np.where(is_ligand[bonds].any(1), 2, (residue[bonds[:, 0]] != residue[bonds[:, 1]]).astype(np.int64))
    near = near_pairs(bonds, n)
    symbols = [a.element.symbol if a.element is not None else "C" for a in topology.atoms]
    radii = vdw_radii(symbols).astype(np.float64)
    local = {int(a): k for k, a in enumerate(ligand)}
    peptide, rama, rama_class = _backbone(layout.torsion_atoms, layout.frame_atoms, _frame_residues(topology, ligand),
                                          np.asarray(first_frame, dtype=np.float64))
    return Geometry(
        topology=topology, ca=ca, residue_labels=[f"{r.name}{r.resSeq}" for r in residues],
        residue_numbers=np.array([r.resSeq for r in residues]), protein=protein,
        residue_of=np.array([position.get(topology.atom(int(i)).residue.index, -1) for i in protein], dtype=np.int64),
        ligand=np.asarray(ligand, dtype=np.int64), is_ligand=is_ligand, torsions=quads[defined],
        torsion_type=kinds[defined], bonds=bonds, bond_class=bond_class, radii=radii,
        excluded=near[:, 0] * n + near[:, 1],
        ligand_bonds={tuple(sorted((local[int(i)], local[int(j)]))) for i, j in bonds
                      if int(i) in local and int(j) in local}, symbols=symbols,
        peptide=peptide, rama=rama, rama_class=rama_class, residue_index=residue)


def _frame_residues(topology, ligand: np.ndarray) -> list[str]:
    """Standard names of the residues the token layout builds N-CA-C frames for (those with a kept atom outside
    the ligand), in its order."""
    lig = set(int(i) for i in ligand)
    return [standard_name(r.name) for r in topology.residues if any(a.index not in lig for a in r.atoms)]


def _backbone(torsion_atoms: np.ndarray, frame_atoms: np.ndarray, names: list[str], first: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peptide quads, Ramachandran quintuples and classes (see :class:`Geometry`) from the layout's
    (R, 7, 4) phi/psi/omega/chi atoms and (R, 3) N, CA, C atoms."""
    omega = torsion_atoms[:, 2]
    cn = np.linalg.norm(first[omega[:, 1].clip(min=0)] - first[omega[:, 2].clip(min=0)], axis=-1)
    bonded = (omega >= 0).all(-1) & (cn <= PEPTIDE_BOND_MAX_A)      # (R,): residue i bonded to i-1
    after = np.append(bonded[1:], False)                            # residue i bonded to i+1
    peptide = omega[bonded].astype(np.int64).reshape(-1, 4)
    has = bonded & after
    prev_c, next_n = np.roll(frame_atoms[:, 2], 1), np.roll(frame_atoms[:, 0], -1)
    rama = np.stack([prev_c, frame_atoms[:, 0], frame_atoms[:, 1], frame_atoms[:, 2], next_n], 1)[has]
    kind = np.array([RAMA_CLASSES.index("glycine") if n == "GLY" else RAMA_CLASSES.index("proline") if n == "PRO"
                     else 0 for n in names], dtype=np.int64)
    return peptide, rama.astype(np.int64).reshape(-1, 5), kind[has]


def superpose(x: np.ndarray, ca: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Superpose every frame on ``target`` by its Cα.

    Args:
        x: (F, A, 3) Å; ca: (C,) indices; target: (C, 3) Å.
    Returns:
        (F, A, 3) superposed coordinates.
    """

    rot, trans = superposition(x[:, ca].astype(np.float64), target.astype(np.float64))
    return (np.einsum("fij,faj->fai", rot, x) + trans[:, None]).astype(np.float32)
