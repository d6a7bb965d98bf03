"""Validity checks of generated structures: bond lengths, steric clashes, ligand chemistry and the backbone.

Coordinates are (F, A, 3) Å of the atoms of a :class:`~hemeplm.evaluate.geometry.Geometry`;
:func:`validity` gathers every check for :func:`~hemeplm.evaluate.trajectory.compare` and
for the reference's own values. Given ``atoms`` (the generated atoms; ``hemeplm evaluate`` passes the
inpainted atoms of ``--task inpaint``), every check counts only the terms (bonds, atom pairs, peptide bonds,
residues) with at least one generated atom; a check left without terms is null.

The backbone checks are not terms of sampling's structure projection
(:func:`hemeplm.geometry.structure.project`: inter-token bond lengths, clashes at 0.8 × the
van der Waals sum, ω within 15° of planar, the angles across the peptide bond within 12 σ),
or are stricter than them: the Ramachandran regions, the 4 σ angle outliers and the 1.0 Å pairs of
the physical filter are not projected onto at all. Peptide bonds are those of
:attr:`~hemeplm.evaluate.geometry.Geometry.peptide` (chain breaks left out).

| key | definition | better |
|---|---|---|
| ``bond_ok_fraction`` | fraction of (frame, topology bond between heavy atoms) pairs whose length is within 0.1 Å of the reference's mean length of that bond | higher |
| ``bond_ok_fraction_intra_residue`` | the same over bonds with both atoms in one protein residue | higher |
| ``bond_ok_fraction_peptide`` | the same over bonds between two protein residues (peptide C(i)–N(i+1), disulfides) | higher |
| ``bond_ok_fraction_ligand`` | the same over bonds with at least one ligand atom; null without ligand | higher |
| ``clashes_per_frame`` | non-bonded heavy-atom pairs (1-2 and 1-3 neighbours and metal atoms excluded) closer than 0.75 × the sum of their van der Waals radii (RDKit), per frame (k-d tree neighbour search) | lower |
| ``clashes_per_frame_protein_protein``, ``clashes_per_frame_protein_ligand``, ``clashes_per_frame_ligand_ligand`` | the same clashes split by whether none, one or both atoms are ligand atoms (they sum to ``clashes_per_frame``); the two with ligand null without ligand | lower |
| ``ligand_valid_fraction`` | fraction of frames whose ligand heavy atoms, bonded by distance (RDKit ``DetermineConnectivity``), have exactly the topology's ligand bonds and sanitise in RDKit (metal bonds left out of sanitisation); null without ligand | higher |
| ``omega_outlier_fraction`` | fraction of (frame, peptide bond) pairs whose ω = CA(i)-C(i)-N(i+1)-CA(i+1) is more than 30° from planar (from both 180° and 0°: cis bonds count as planar) | lower |
| ``peptide_angle_outlier_fraction`` | fraction of (frame, peptide bond, angle) triples whose angle CA(i)-C(i)-N(i+1) or C(i)-N(i+1)-CA(i+1) is more than 4 σ from its mean (116.2° ± 2.0°, 121.7° ± 2.3°: Engh & Huber's means, AlphaFold's spreads; :data:`~hemeplm.geometry.structure.PEPTIDE_ANGLES`) | lower |
| ``ramachandran_outlier_fraction`` | fraction of (frame, residue with φ and ψ) pairs whose (φ, ψ) lies outside the generous allowed regions of its class, :data:`RAMACHANDRAN_REGIONS` (below) | lower |
| ``physical_filter_pass_fraction`` | fraction of frames that pass BioEmu's physical filter: every Cα(i)–Cα(i+1) of a peptide bond shorter than 4.5 Å, every peptide C(i)–N(i+1) shorter than 2.0 Å, and no two heavy atoms of different residues (the ligand's residues included) closer than 1.0 Å | higher |

Ramachandran regions (:data:`RAMACHANDRAN_REGIONS`, degrees, φ and ψ in [-180°, 180°], boxes inclusive).
They are not a published table: they are our own boxes, drawn to be generous (each holds the classic
allowed region of its class, e.g. Lovell et al. 2003's, with a wide margin), so that MD's rare conformations
pass and only backbones that no protein adopts are outliers. A residue's class: glycine, proline (its φ is
held near -65° by the ring), or general (every other residue, pre-proline included).

| class | allowed (φ range × ψ range) |
|---|---|
| general | [-180, -15] × [-120, 180] (α_R, bridge, β, PPII); [-180, -45] × [-180, -150] (β across ψ = ±180°); [15, 120] × [-120, 120] (α_L and below it); [40, 120] × [150, 180] and [40, 120] × [-180, -120] (right of φ = 0 near ψ = ±180°); [150, 180] × [120, 180] and [150, 180] × [-180, -150] (β across φ = ±180°) |
| glycine | [-180, -15] × [-180, 180] and [15, 180] × [-180, 180] (everything but φ near 0°) |
| proline | [-120, -15] × [-80, 180] (α, bridge, PPII); [-120, -15] × [-180, -150] (PPII across ψ = ±180°) |

On the bundled T4L L99A MD (``data/t4l_l99a_xylene/md``, 200 frames, Amber) 0.03 % of (frame, residue) pairs
fall outside (helix residues whose φ reaches -3° to -11°, a few at the edges of β); uniformly random φ and ψ
fall outside for 32 % of general residues, 8 % of glycines and 76 % of prolines.
"""

from __future__ import annotations

import math
import numpy as np

from hemeplm.geometry.structure import CLASH_SCALE, METALS, PEPTIDE_ANGLES, peptide_geometry
from hemeplm.geometry.torsion import dihedral_angle
from hemeplm.evaluate.geometry import BOND_CLASSES, RAMA_CLASSES, Geometry

BOND_TOLERANCE_A = 0.1
#: ``clashes_per_frame_<class>``, indexed by the number of ligand atoms in the pair
CLASH_CLASSES = ("protein_protein", "protein_ligand", "ligand_ligand")
#: degrees; ``omega_outlier_fraction`` counts ω farther than this from planar
OMEGA_OUTLIER_DEG = 30.0
#: ``peptide_angle_outlier_fraction`` counts angles farther than this many σ from their mean
ANGLE_OUTLIER_SIGMAS = 4.0
#: BioEmu's physical filter (Å): Cα(i)-Cα(i+1) below, peptide C-N below, atoms of different residues not within
FILTER_CA_CA_A, FILTER_C_N_A, FILTER_CLASH_A = 4.5, 2.0, 1.0
#: per class of :data:`~hemeplm.evaluate.geometry.RAMA_CLASSES`, the allowed boxes (φ_lo, φ_hi, ψ_lo, ψ_hi), degrees
RAMACHANDRAN_REGIONS = {
    "general": ((-180, -15, -120, 180), (-180, -45, -180, -150), (15, 120, -120, 120), (40, 120, 150, 180),
                (40, 120, -180, -120), (150, 180, 120, 180), (150, 180, -180, -150)),
    "glycine": ((-180, -15, -180, 180), (15, 180, -180, 180)),
    "proline": ((-120, -15, -80, 180), (-120, -15, -180, -150)),
}


def bond_lengths(x: np.ndarray, geom: Geometry) -> np.ndarray:
    """(F, B) lengths (Å) of the topology bonds in (F, A, 3) coordinates."""
    return np.linalg.norm(x[:, geom.bonds[:, 0]] - x[:, geom.bonds[:, 1]], axis=-1)


def _touches(atoms: np.ndarray | None, *index: np.ndarray) -> np.ndarray | bool:
    """Whether each term (given by its atoms' index arrays) has at least one generated atom (True without ``atoms``)."""
    if atoms is None:
        return True
    return np.any([atoms[i] for i in index], axis=0)


def _fraction(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else math.nan


def bond_ok_fractions(x: np.ndarray, geom: Geometry, ref_lengths: np.ndarray, atoms: np.ndarray | None = None) -> dict:
    """Fractions of (frame, bond) pairs within 0.1 Å of the reference mean length, overall and per bond class.

    Args:
        x: (F, A, 3) Å; ref_lengths: (B,) reference mean bond lengths in Å.
        atoms: optional (A,) bool, the generated atoms: only bonds with one of them count.
    Returns:
        ``bond_ok_fraction`` and ``bond_ok_fraction_<class>`` for each of :data:`BOND_CLASSES`
        (NaN for a class without bonds, e.g. ``ligand`` without ligand).
    """
    ok = np.abs(bond_lengths(x, geom) - ref_lengths) <= BOND_TOLERANCE_A      # (F, B)
    counted = np.broadcast_to(_touches(atoms, geom.bonds[:, 0], geom.bonds[:, 1]), geom.bond_class.shape)
    out = {"bond_ok_fraction": _fraction(ok[:, counted])}
    for k, name in enumerate(BOND_CLASSES):
        out[f"bond_ok_fraction_{name}"] = _fraction(ok[:, counted & (geom.bond_class == k)])
    return out


def clash_counts(x: np.ndarray, geom: Geometry, atoms: np.ndarray | None = None) -> np.ndarray:
    """Per frame, the non-bonded heavy-atom pairs closer than 0.75 × (r_i + r_j), by kind.

    1-2 and 1-3 neighbours and metal atoms are left out; pairs come from a
    k-d tree search, so the cost is linear in atoms.

    Args:
        x: (F, A, 3) Å; atoms: optional (A,) bool, the generated atoms: only pairs with one of them count.
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
        close &= ~np.isin(i * n + j, geom.excluded) & _touches(atoms, i, j)
        kind = geom.is_ligand[i[close]].astype(np.int64) + geom.is_ligand[j[close]]
        counts[f] = np.bincount(kind, minlength=len(CLASH_CLASSES))
    return counts


def clashes_by_kind(x: np.ndarray, geom: Geometry, atoms: np.ndarray | None = None) -> dict:
    """Mean number per frame of clashes (:func:`clash_counts`), in total and by kind.

    Args:
        x: (F, A, 3) Å; atoms: optional (A,) bool, the generated atoms: only pairs with one of them count.
    Returns:
        ``clashes_per_frame`` and ``clashes_per_frame_<kind>`` for each of :data:`CLASH_CLASSES`
        (pairs with 0, 1 or 2 ligand atoms; they sum to the total; the two with ligand NaN without ligand;
        protein-protein NaN when no protein atom was generated).
    """
    counts = clash_counts(x, geom, atoms).sum(0)
    out = {"clashes_per_frame": float(counts.sum()) / len(x)}
    protein = atoms is None or bool(atoms[~geom.is_ligand].any())
    for k, name in enumerate(CLASH_CLASSES):
        defined = (k == 0 and protein) or (k > 0 and len(geom.ligand))
        out[f"clashes_per_frame_{name}"] = float(counts[k]) / len(x) if defined else math.nan
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


def ramachandran_allowed(phi: np.ndarray, psi: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Whether each (φ, ψ) (degrees, in [-180, 180]) lies in an allowed box of its class (:data:`RAMACHANDRAN_REGIONS`).

    Args:
        phi, psi: (..., Q) degrees; kind: (Q,) index into :data:`~hemeplm.evaluate.geometry.RAMA_CLASSES`.
    Returns:
        (..., Q) bool.
    """
    ok = np.zeros(np.broadcast(phi, psi).shape, dtype=bool)
    for k, name in enumerate(RAMA_CLASSES):
        inside = np.zeros_like(ok)
        for f0, f1, s0, s1 in RAMACHANDRAN_REGIONS[name]:
            inside |= (phi >= f0) & (phi <= f1) & (psi >= s0) & (psi <= s1)
        ok |= inside & (kind == k)
    return ok


def backbone_angles(x: np.ndarray, geom: Geometry) -> dict[str, np.ndarray]:
    """Backbone angles in degrees of (F, A, 3) Å: ``omega_deviation`` (F, P), ω's distance from planar;
    ``ca_c_n`` and ``c_n_ca`` (F, P), the angles across each peptide bond; ``phi`` and ``psi`` (F, Q), in the
    IUPAC sign convention (a right-handed α helix near (-60°, -45°))."""
    import torch

    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    dev, ca_c_n, c_n_ca = (np.degrees(a.numpy()) for a in peptide_geometry(t, torch.from_numpy(geom.peptide)))
    r = [t[:, geom.rama[:, k]] for k in range(5)]
    # dihedral_angle turns the other way from the IUPAC convention the Ramachandran regions use (mdtraj's)
    phi, psi = (-np.degrees(a.numpy()) for a in (dihedral_angle(*r[:4]), dihedral_angle(*r[1:])))
    return {"omega_deviation": dev, "ca_c_n": ca_c_n, "c_n_ca": c_n_ca, "phi": phi, "psi": psi}


def backbone_checks(x: np.ndarray, geom: Geometry, atoms: np.ndarray | None = None) -> dict:
    """``omega_outlier_fraction``, ``peptide_angle_outlier_fraction`` and ``ramachandran_outlier_fraction``
    (module table) of (F, A, 3) Å; with ``atoms`` (A,) bool, only peptide bonds and residues with a generated
    atom among theirs count. NaN where nothing counts."""
    a = backbone_angles(x, geom)
    bond = _touches(atoms, *geom.peptide.T) if len(geom.peptide) else np.zeros(0, bool)
    res = _touches(atoms, *geom.rama.T) if len(geom.rama) else np.zeros(0, bool)
    bond, res = np.broadcast_to(bond, len(geom.peptide)), np.broadcast_to(res, len(geom.rama))
    angles = [np.abs(a[k] - mean) > ANGLE_OUTLIER_SIGMAS * sigma for k, (mean, sigma) in PEPTIDE_ANGLES.items()]
    return {"omega_outlier_fraction": _fraction(a["omega_deviation"][:, bond] > OMEGA_OUTLIER_DEG),
            "peptide_angle_outlier_fraction": _fraction(np.stack([o[:, bond] for o in angles])),
            "ramachandran_outlier_fraction": _fraction(
                ~ramachandran_allowed(a["phi"][:, res], a["psi"][:, res], geom.rama_class[res]))}


def physical_filter(x: np.ndarray, geom: Geometry, atoms: np.ndarray | None = None) -> np.ndarray:
    """(F,) bool: BioEmu's physical filter (module table) on (F, A, 3) Å; with ``atoms`` (A,) bool only Cα pairs,
    C-N bonds and close pairs with a generated atom count."""
    from scipy.spatial import cKDTree

    p = geom.peptide
    bond = np.broadcast_to(_touches(atoms, *p.T), len(p)) if len(p) else np.zeros(0, bool)
    ca = np.linalg.norm(x[:, p[bond, 0]] - x[:, p[bond, 3]], axis=-1) < FILTER_CA_CA_A
    cn = np.linalg.norm(x[:, p[bond, 1]] - x[:, p[bond, 2]], axis=-1) < FILTER_C_N_A
    ok = ca.all(1) & cn.all(1)
    for f, frame in enumerate(x):
        if not ok[f]:
            continue
        pairs = cKDTree(frame).query_pairs(FILTER_CLASH_A, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        bad = (geom.residue_index[i] != geom.residue_index[j]) & _touches(atoms, i, j)
        ok[f] = not bad.any()
    return ok


def validity(frames: np.ndarray, ref, atoms: np.ndarray | None = None) -> dict:
    """``bond_ok_fraction*``, ``clashes_per_frame*``, ``ligand_valid_fraction`` and the backbone checks and
    physical filter of (F, A, 3) frames against a :class:`~hemeplm.evaluate.trajectory.Reference` (its geometry
    and mean bond lengths); with ``atoms`` (A,) bool, only terms with a generated atom count (module docstring)."""
    geom = ref.geom
    return {**bond_ok_fractions(frames, geom, ref.bond_lengths, atoms), **clashes_by_kind(frames, geom, atoms),
            "ligand_valid_fraction": ligand_valid_fraction(frames, geom) if len(geom.ligand) else math.nan,
            **backbone_checks(frames, geom, atoms),
            "physical_filter_pass_fraction": float(physical_filter(frames, geom, atoms).mean())}
