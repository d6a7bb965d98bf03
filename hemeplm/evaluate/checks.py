"""Validity checks of generated structures: bond lengths, steric clashes and ligand chemistry.

Coordinates are (F, A, 3) Å of the atoms of a :class:`~hemeplm.evaluate.geometry.Geometry`;
:func:`validity` gathers every check for :func:`~hemeplm.evaluate.trajectory.compare` and
for the reference's own values.

| key | definition | better |
|---|---|---|
| ``bond_ok_fraction`` | fraction of (frame, topology bond between heavy atoms) pairs whose length is within 0.1 Å of the reference's mean length of that bond | higher |
| ``bond_ok_fraction_intra_residue`` | the same over bonds with both atoms in one protein residue | higher |
| ``bond_ok_fraction_peptide`` | the same over bonds between two protein residues (peptide C(i)–N(i+1), disulfides) | higher |
| ``bond_ok_fraction_ligand`` | the same over bonds with at least one ligand atom; null without ligand | higher |
| ``clashes_per_frame`` | non-bonded heavy-atom pairs (1-2 and 1-3 neighbours and metal atoms excluded) closer than 0.75 × the sum of their van der Waals radii (RDKit), per frame (k-d tree neighbour search) | lower |
| ``clashes_per_frame_protein_protein``, ``clashes_per_frame_protein_ligand``, ``clashes_per_frame_ligand_ligand`` | the same clashes split by whether none, one or both atoms are ligand atoms (they sum to ``clashes_per_frame``); the two with ligand null without ligand | lower |
| ``ligand_valid_fraction`` | fraction of frames whose ligand heavy atoms, bonded by distance (RDKit ``DetermineConnectivity``), have exactly the topology's ligand bonds and sanitise in RDKit (metal bonds left out of sanitisation); null without ligand | higher |
"""

from __future__ import annotations

import math
import numpy as np

from hemeplm.geometry.structure import CLASH_SCALE, METALS
from hemeplm.evaluate.geometry import BOND_CLASSES, Geometry

BOND_TOLERANCE_A = 0.1
#: ``clashes_per_frame_<class>``, indexed by the number of ligand atoms in the pair
CLASH_CLASSES = ("protein_protein", "protein_ligand", "ligand_ligand")


def bond_lengths(x: np.ndarray, geom: Geometry) -> np.ndarray:
    """(F, B) lengths (Å) of the topology bonds in (F, A, 3) coordinates."""
    return np.linalg.norm(x[:, geom.bonds[:, 0]] - x[:, geom.bonds[:, 1]], axis=-1)


def bond_ok_fractions(x: np.ndarray, geom: Geometry, ref_lengths: np.ndarray) -> dict:
    """Fractions of (frame, bond) pairs within 0.1 Å of the reference mean length, overall and per bond class.

    Args:
        x: (F, A, 3) Å; ref_lengths: (B,) reference mean bond lengths in Å.
    Returns:
        ``bond_ok_fraction`` and ``bond_ok_fraction_<class>`` for each of :data:`BOND_CLASSES`
        (NaN for a class without bonds, e.g. ``ligand`` without ligand).
    """
    ok = np.abs(bond_lengths(x, geom) - ref_lengths) <= BOND_TOLERANCE_A      # (F, B)
    out = {"bond_ok_fraction": float(ok.mean())}
    for k, name in enumerate(BOND_CLASSES):
        sel = geom.bond_class == k
        out[f"bond_ok_fraction_{name}"] = float(ok[:, sel].mean()) if sel.any() else math.nan
    return out


def clash_counts(x: np.ndarray, geom: Geometry) -> np.ndarray:
    """Per frame, the non-bonded heavy-atom pairs closer than 0.75 × (r_i + r_j), by kind.

    1-2 and 1-3 neighbours and metal atoms are left out; pairs come from a
    k-d tree search, so the cost is linear in atoms.

    Args:
        x: (F, A, 3) Å.
    Returns:
        (F, 3) int64 counts of pairs with 0, 1 or 2 ligand atoms (:data:`CLASH_CLASSES`).
    """
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    n = x.shape[1]
    idx = np.flatnonzero(geom.radii > 0)
    radius = CLASH_SCALE * 2 * geom.radii.max()
    counts = np.zeros((len(x), len(CLASH_CLASSES)), dtype=np.int64)
    for f, frame in enumerate(tqdm(x, desc="clashes", leave=False, disable=None)):
        pairs = cKDTree(frame[idx]).query_pairs(radius, output_type="ndarray")
        i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
        close = np.linalg.norm(frame[i] - frame[j], axis=-1) < CLASH_SCALE * (geom.radii[i] + geom.radii[j])
        close &= ~np.isin(i * n + j, geom.excluded)
        kind = geom.is_ligand[i[close]].astype(np.int64) + geom.is_ligand[j[close]]
        counts[f] = np.bincount(kind, minlength=len(CLASH_CLASSES))
    return counts


def clashes_by_kind(x: np.ndarray, geom: Geometry) -> dict:
    """Mean number per frame of clashes (:func:`clash_counts`), in total and by kind.

    Args:
        x: (F, A, 3) Å.
    Returns:
        ``clashes_per_frame`` and ``clashes_per_frame_<kind>`` for each of :data:`CLASH_CLASSES`
        (pairs with 0, 1 or 2 ligand atoms; they sum to the total; the two with ligand NaN without ligand).
    """
    counts = clash_counts(x, geom).sum(0)
    out = {"clashes_per_frame": float(counts.sum()) / len(x)}
    for k, name in enumerate(CLASH_CLASSES):
        out[f"clashes_per_frame_{name}"] = float(counts[k]) / len(x) if k == 0 or len(geom.ligand) else math.nan
    return out


def violations_per_frame(x: np.ndarray, geom: Geometry, ref_lengths: np.ndarray) -> np.ndarray:
    """(F,) per frame, clashes (:func:`clash_counts`) plus bonds more than 0.1 Å from the reference mean length.

    Args:
        x: (F, A, 3) Å; ref_lengths: (B,) reference mean bond lengths in Å.
    """
    bad_bonds = (np.abs(bond_lengths(x, geom) - ref_lengths) > BOND_TOLERANCE_A).sum(1)
    return clash_counts(x, geom).sum(1) + bad_bonds


def clashes_per_frame(x: np.ndarray, geom: Geometry) -> float:
    """``clashes_per_frame`` of :func:`clashes_by_kind`: all clashes per frame of (F, A, 3) Å coordinates."""
    return clashes_by_kind(x, geom)["clashes_per_frame"]


def ligand_valid_fraction(x: np.ndarray, geom: Geometry) -> float:
    """Fraction of frames whose ligand has the topology's bonds when bonded by distance, and sanitises.

    Bonds are inferred from distances by RDKit (``DetermineConnectivity``,
    covalent radii × 1.3); the molecule is sanitised without its metal bonds.

    Args:
        x: (F, A, 3) Å.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D
    from tqdm import tqdm

    symbols = [geom.symbols[int(i)] for i in geom.ligand]
    template = Chem.RWMol()
    for s in symbols:
        atom = Chem.Atom(s)
        atom.SetNoImplicit(True)
        template.AddAtom(atom)
    metals = {k for k, s in enumerate(symbols) if s in METALS}
    valid = 0
    for frame in tqdm(x[:, geom.ligand].astype(np.float64), desc="ligand validity", leave=False, disable=None):
        mol = Chem.Mol(template)
        conf = Chem.Conformer(len(symbols))
        for k, p in enumerate(frame):
            conf.SetAtomPosition(k, Point3D(*p))
        mol.AddConformer(conf, assignId=True)
        rdDetermineBonds.DetermineConnectivity(mol)
        pairs = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
        if pairs != geom.ligand_bonds:
            continue
        rw = Chem.RWMol(mol)
        for i, j in pairs:
            if i in metals or j in metals:
                rw.RemoveBond(i, j)
        valid += Chem.SanitizeMol(rw, catchErrors=True) == Chem.SanitizeFlags.SANITIZE_NONE
    return valid / len(x)


def validity(frames: np.ndarray, ref) -> dict:
    """``bond_ok_fraction*``, ``clashes_per_frame*`` and ``ligand_valid_fraction`` of (F, A, 3) frames
    against a :class:`~hemeplm.evaluate.trajectory.Reference` (its geometry and mean bond lengths)."""
    geom = ref.geom
    return {**bond_ok_fractions(frames, geom, ref.bond_lengths), **clashes_by_kind(frames, geom),
            "ligand_valid_fraction": ligand_valid_fraction(frames, geom) if len(geom.ligand) else math.nan}
