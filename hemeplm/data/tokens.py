"""Tokens: one per protein residue (atom14-style slots), one per ligand group.

Each token owns up to ``W`` atoms (``W = 14`` for heavy atoms). Ligand atoms
(everything ``data.ligand`` selects: a drug, hemes, kept waters and ions) are
pooled into spatially compact groups of at most ``ligand_group`` atoms (see
:func:`ligand_groups`), so a system's token count grows with its atom count
whatever it is made of: a heme is four tokens, not 43, and bulk water about
one token per ten waters. Every token has an anchor residue whose N-CA-C
frame it is expressed in (its own for a residue, the nearest residue to its
centre for a ligand group); what the model generates for a token, a rigid
body plus torsions, is in :mod:`hemeplm.data.internal`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hemeplm.data.residues import ATOM14, ATOM_ALIASES, CHI, TORSION_NAMES, UNK, residue_type, standard_name

log = logging.getLogger(__name__)

KIND_RESIDUE, KIND_LIGAND, KIND_EXTRA = 0, 1, 2

#: Å; small ligand molecules (waters, ions) share a token only while their centres lie this close to the group's
LIGAND_GROUP_RADIUS = 6.0


@dataclass
class TokenLayout:
    """Which atoms each token holds and which atoms define its frame.

    Attributes (N tokens, W slots, A atoms, R protein residues):
        atom_index: (N, W) int64 atom index per slot, -1 where empty.
        kind: (N,) int64, KIND_RESIDUE / KIND_LIGAND / KIND_EXTRA.
        res_type: (N,) residue type of the token (its anchor residue for ligand groups).
        residue: (N,) protein residue (0..R-1) whose N-CA-C frame the token uses.
        frame_atoms: (R, 3) atom indices of N, CA, C of every protein residue.
        torsion_atoms: (R, 7, 4) atom indices of phi, psi, omega, chi1-4; -1 where undefined.
        atom_token: (A,) token holding each atom; atom_slot: (A,) its slot.
    """

    atom_index: np.ndarray
    kind: np.ndarray
    res_type: np.ndarray
    residue: np.ndarray
    frame_atoms: np.ndarray
    torsion_atoms: np.ndarray
    atom_token: np.ndarray
    atom_slot: np.ndarray

    @property
    def n_tokens(self) -> int:
        return len(self.kind)


def build_layout(topology, ligand: np.ndarray, first_frame: np.ndarray, width: int = 14,
                 ligand_group: int | None = None) -> TokenLayout:
    """Token layout of a system.

    Args:
        topology: mdtraj Topology of the kept atoms.
        ligand: (L,) ligand atom indices.
        first_frame: (A, 3) coordinates used to group the ligand atoms and choose each
            group's anchor residue.
        width: atom slots per token; residue atoms that do not fit (e.g. a Trp OXT)
            become single-atom tokens in their residue's frame.
        ligand_group: at most this many ligand atoms per token (1: one token per ligand
            atom; None: ``width``).
    """
    ligand_group = width if ligand_group is None else ligand_group
    lig = set(int(i) for i in ligand)
    rows, kinds, rtypes, res_of = [], [], [], []
    frames, torsions, residue_types = [], [], []
    residues = [r for r in topology.residues if any(a.index not in lig for a in r.atoms)]
    for ri, res in enumerate(residues):
        name = standard_name(res.name)
        atoms = {ATOM_ALIASES.get((name, a.name), a.name): a.index for a in res.atoms if a.index not in lig}
        order = list(ATOM14.get(name, ("N", "CA", "C", "O")))
        slots = [atoms.get(n, -1) for n in order]
        extra = [i for n, i in atoms.items() if n not in order]
        slots += [-1] * (width - len(slots))
        overflow = []
        for i in extra:
            free = [s for s in range(len(order), width) if slots[s] < 0]
            if free:
                slots[free[0]] = i
            else:
                overflow.append(i)
        if min(atoms.get("N", -1), atoms.get("CA", -1), atoms.get("C", -1)) < 0:
            raise ValueError(f"residue {res} lacks one of N, CA, C; cannot build its frame")
        frames.append((atoms["N"], atoms["CA"], atoms["C"]))
        rt = residue_type(res.name)
        residue_types.append(rt)
        rows.append(slots)
        kinds.append(KIND_RESIDUE)
        rtypes.append(rt)
        res_of.append(ri)
        for i in overflow:
            rows.append([i] + [-1] * (width - 1))
            kinds.append(KIND_EXTRA)
            rtypes.append(rt)
            res_of.append(ri)
        torsions.append(_chi(name, atoms, str(res)))
    frame_atoms = np.asarray(frames, dtype=np.int64).reshape(-1, 3)
    torsion_atoms = np.asarray(torsions, dtype=np.int64).reshape(-1, 7, 4)
    _backbone_torsions(topology, residues, frame_atoms, torsion_atoms)
    if len(lig):
        ca = first_frame[frame_atoms[:, 1]]
        for group in ligand_groups(topology, np.asarray(sorted(lig)), first_frame, ligand_group):
            anchor = int(np.argmin(((ca - first_frame[group].mean(0)) ** 2).sum(-1)))
            rows.append(list(group) + [-1] * (width - len(group)))
            kinds.append(KIND_LIGAND)
            rtypes.append(residue_types[anchor])
            res_of.append(anchor)
    atom_index = np.asarray(rows, dtype=np.int64).reshape(-1, width)
    atom_token = np.full(topology.n_atoms, -1, dtype=np.int64)
    atom_slot = np.full(topology.n_atoms, -1, dtype=np.int64)
    tok, slot = np.nonzero(atom_index >= 0)
    atom_token[atom_index[tok, slot]] = tok
    atom_slot[atom_index[tok, slot]] = slot
    return TokenLayout(atom_index=atom_index, kind=np.asarray(kinds, dtype=np.int64),
                       res_type=np.asarray(rtypes, dtype=np.int64), residue=np.asarray(res_of, dtype=np.int64),
                       frame_atoms=frame_atoms, torsion_atoms=torsion_atoms, atom_token=atom_token,
                       atom_slot=atom_slot)


def bisect(idx: np.ndarray, centres: np.ndarray, size: float, weight: np.ndarray | None = None,
           radius: float = np.inf) -> list[np.ndarray]:
    """Recursive coordinate bisection into spatially compact parts.

    A part is split at the (weighted) median of its longest axis while its total weight
    exceeds ``size`` or, with more than one member, a member's centre lies farther than
    ``radius`` from the part's weighted centre.

    Args:
        idx: (M,) indices into ``centres``; centres: (K, 3); weight: (K,) (None: 1 each).
    Returns:
        the parts, as index arrays, in bisection order.
    """
    w = np.ones(len(centres)) if weight is None else np.asarray(weight, dtype=float)
    pts, wi = centres[idx], w[idx]
    wide = len(idx) > 1 and np.isfinite(radius) and (
        np.linalg.norm(pts - (wi[:, None] * pts).sum(0) / wi.sum(), axis=1).max() > radius)
    if len(idx) <= 1 or (wi.sum() <= size and not wide):
        return [idx]
    axis = int(np.argmax(pts.max(0) - pts.min(0)))
    order = np.argsort(pts[:, axis], kind="stable")
    half = int(np.clip(np.searchsorted(np.cumsum(wi[order]), wi.sum() / 2, side="right"), 1, len(idx) - 1))
    return (bisect(idx[order[:half]], centres, size, weight, radius)
            + bisect(idx[order[half:]], centres, size, weight, radius))


def ligand_groups(topology, ligand: np.ndarray, first_frame: np.ndarray, size: int) -> list[np.ndarray]:
    """Pool ligand atoms into spatially compact groups of at most ``size`` atoms.

    A ligand residue larger than ``size`` (a heme: 43 heavy atoms) is bisected into pieces;
    smaller residues of one residue name (waters, ions, a small ligand) are pooled while the
    group fits in ``size`` atoms and its members lie within :data:`LIGAND_GROUP_RADIUS` Å of
    its centre. Residues of different names never share a token.

    Args:
        ligand: (L,) sorted atom indices; first_frame: (A, 3).
    Returns:
        groups of atom indices (each sorted), ordered by their first atom.
    """
    by_residue: dict[int, list[int]] = {}
    for i in ligand:
        by_residue.setdefault(topology.atom(int(i)).residue.index, []).append(int(i))
    units: dict[str, list[np.ndarray]] = {}
    for atoms in by_residue.values():
        atoms = np.asarray(atoms)
        name = topology.atom(int(atoms[0])).residue.name
        pieces = bisect(np.arange(len(atoms)), first_frame[atoms], size)
        units.setdefault(name, []).extend(atoms[p] for p in pieces)
    groups = []
    for members in units.values():
        centres = np.stack([first_frame[m].mean(0) for m in members])
        sizes = np.array([len(m) for m in members])
        for part in bisect(np.arange(len(members)), centres, size, sizes, LIGAND_GROUP_RADIUS):
            groups.append(np.sort(np.concatenate([members[k] for k in part])))
    return sorted(groups, key=lambda g: int(g[0]))


def _chi(name: str, atoms: dict[str, int], label: str) -> list[list[int]]:
    """Atom indices of chi1-4 (rows 3-6 of the 7 torsions); a chi whose atoms are missing stays undefined (-1),
    which leaves that part of the side chain rigid in the key frame's pose (logged)."""
    out = [[-1] * 4 for _ in TORSION_NAMES]
    for k, quad in enumerate(CHI.get(name, ())):
        if all(n in atoms for n in quad):
            out[3 + k] = [atoms[n] for n in quad]
        else:
            log.warning("%s lacks atom(s) %s of chi%d: that torsion is not generated (held as in the key frame)",
                        label, ", ".join(n for n in quad if n not in atoms), k + 1)
    return out


def _backbone_torsions(topology, residues, frame_atoms: np.ndarray, torsion_atoms: np.ndarray) -> None:
    """Fill phi, psi, omega where consecutive residues are bonded (C(i-1)-N(i))."""
    bonded = {frozenset((a.index, b.index)) for a, b in topology.bonds}
    for i in range(1, len(residues)):
        n0, ca0, c0 = frame_atoms[i - 1]
        n1, ca1, c1 = frame_atoms[i]
        if frozenset((int(c0), int(n1))) not in bonded:
            continue
        torsion_atoms[i, 0] = (c0, n1, ca1, c1)      # phi(i)
        torsion_atoms[i - 1, 1] = (n0, ca0, c0, n1)  # psi(i-1)
        torsion_atoms[i, 2] = (ca0, c0, n1, ca1)     # omega(i)




def gather_atom14(x: torch.Tensor, layout: dict[str, torch.Tensor]) -> torch.Tensor:
    """(..., A, 3) -> (..., N, W, 3) slot coordinates, zero in empty slots."""
    out = x[..., layout["atom_index"].clamp(min=0), :]
    return out * layout["atom_index"].ge(0)[..., None].to(out.dtype)


def scatter_atom14(slots: torch.Tensor, layout: dict[str, torch.Tensor], n_atoms: int) -> torch.Tensor:
    """(..., N, W, 3) -> (..., A, 3), inverse of :func:`gather_atom14`."""
    mask = layout["atom_index"] >= 0
    out = slots.new_zeros(*slots.shape[:-3], n_atoms, 3)
    out[..., layout["atom_index"][mask], :] = slots[..., mask, :]
    return out


__all__ = ["TokenLayout", "build_layout", "bisect", "ligand_groups", "LIGAND_GROUP_RADIUS", "gather_atom14",
           "scatter_atom14", "KIND_RESIDUE", "KIND_LIGAND", "KIND_EXTRA", "UNK"]
