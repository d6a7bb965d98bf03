"""Generated vs reference MD, energies and forces, and the ``hemeplm evaluate`` command.

Reference and generated trajectories are read by the same
:func:`hemeplm.data.load.load_system` (solvent and hydrogens dropped, Å) and
superposed on the protein Cα of the first reference frame. Every metric is
computed for the model and for baselines on the same frames:

- ``static``: frame 0 of each generated trajectory repeated for its length;
- ``random_walk``: from frame 0 of each generated trajectory, isotropic
  Gaussian steps per atom whose variance is the reference's per-atom step
  variance at the generated frame spacing (seeded), then superposed on Cα;
- ``prior`` (only with ``--prior``): trajectories sampled elsewhere from the
  same checkpoint with the network's output zeroed, read like the generated
  ones (same topology and frame spacing): what the sampler and the
  conditioning give without the network, so what the model gains over it is
  the network's.

A model that does not beat them has learnt nothing. ``metrics.json`` holds
``{"model": {...}, "static": {...}, "random_walk": {...}, "prior": {...}, "info": {...}}``
(``prior`` only when given); ``info.reference`` holds the reference's own
decorrelation time and validity. Generated frames are taken to be spaced like
the reference's unless ``--generated-timestep-ps`` says otherwise.

TICA is fitted only when the reference holds at least 4 time-lagged frame
pairs (t, t + lag), pooled over its trajectories, per TICA feature. Below that
the instantaneous covariance C00 that TICA whitens with is rank-deficient
(pairs ≤ features) or nearly so: for independent samples its smallest
eigenvalue shrinks by (1 − √(features / pairs))² (Marchenko–Pastur), which at
4 pairs per feature still leaves 1/4, so whitening amplifies no direction by
more than 2×; correlated MD frames hold fewer independent samples, so this is
a minimum, not a guarantee. When TICA is skipped, ``tica_jsd``,
``tic1_decorrelation_ps`` and the ``tps_*`` metrics are null in every column,
there is no ``tica_fes.png``, and ``info.tica`` (and, for ``--task tps``,
``info.tps``) says why; otherwise ``info.tica`` says what TICA was fitted on.

Trajectory metrics (JSD = Jensen–Shannon divergence, base 2, in 0..1):

| key | definition | better |
|---|---|---|
| ``torsion_jsd`` | mean over all phi, psi, chi1–4 torsions (omega left out) of the JSD between generated and reference histograms (36 bins over −π..π), all frames pooled | lower |
| ``torsion_jsd_<type>`` | the same mean over one type: phi, psi, chi1, chi2, chi3, chi4 | lower |
| ``tica_jsd`` | JSD of the 2-D histograms (30 × 30 bins spanning the reference's range; points outside fall in the edge bins) of the first two TICA components; TICA (deeptime, kinetic map) fitted on the reference's sin/cos torsion features (the 256 of largest reference variance; deeptime's eigensolver is cubic in features) at lag ``--lag-ps`` (default: one frame); null when the reference has fewer than 4 time-lagged frame pairs per feature (``info.tica``) | lower |
| ``rmsf_pearson`` | Pearson r between per-residue Cα RMSF (Å, all frames of an ensemble pooled, superposed on Cα) of generated and reference; null when one is constant | higher |
| ``contact_jsd`` | JSD between per-residue protein–ligand contact frequencies (fraction of frames with any protein–ligand heavy-atom pair within 4.5 Å), each vector normalised to sum 1; null without ligand | lower |
| ``contact_pearson`` | Pearson r of the same contact-frequency vectors; null without ligand | higher |
| ``ligand_rmsd_mean_A``, ``ligand_rmsd_median_A`` | ligand heavy-atom RMSD (Å, no fit on the ligand) to the reference after superposing protein Cα: generated frame i against reference frame i when both have the same number of frames (each pair superposed on Cα), else against the nearest reference frame in the common Cα frame (``info.ligand_rmsd_pairing``); null without ligand | lower |
| ``tic1_decorrelation_ps`` | time (ps) at which the autocorrelation of TIC1 (pooled over trajectories) first falls below 1/e, linearly interpolated; null if it does not within half the longest trajectory or TIC1 is constant, or when TICA is skipped (as ``tica_jsd``); the reference's value is ``info.reference.tic1_decorrelation_ps`` | closer to reference |
| ``bond_ok_fraction`` | fraction of (frame, topology bond between heavy atoms) pairs whose length is within 0.1 Å of the reference's mean length of that bond | higher |
| ``bond_ok_fraction_intra_residue`` | the same over bonds with both atoms in one protein residue | higher |
| ``bond_ok_fraction_peptide`` | the same over bonds between two protein residues (peptide C(i)–N(i+1), disulfides) | higher |
| ``bond_ok_fraction_ligand`` | the same over bonds with at least one ligand atom; null without ligand | higher |
| ``clashes_per_frame`` | non-bonded heavy-atom pairs (1-2 and 1-3 neighbours and metal atoms excluded) closer than 0.75 × the sum of their van der Waals radii (RDKit), per frame (k-d tree neighbour search) | lower |
| ``clashes_per_frame_protein_protein``, ``clashes_per_frame_protein_ligand``, ``clashes_per_frame_ligand_ligand`` | the same clashes split by whether none, one or both atoms are ligand atoms (they sum to ``clashes_per_frame``); the two with ligand null without ligand | lower |
| ``ligand_valid_fraction`` | fraction of frames whose ligand heavy atoms, bonded by distance (RDKit ``DetermineConnectivity``), have exactly the topology's ligand bonds and sanitise in RDKit (metal bonds left out of sanitisation); null without ligand | higher |
| ``tps_success_fraction`` | ``--task tps`` only: fraction of generated paths that leave their start state and later reach the end state; states are k-means clusters (5) of the reference's TIC1/TIC2; start = state of frame 0; end = state of the last frame of the paired reference trajectory when there are as many reference as generated trajectories, else of the model's last (conditioned) frame (for ``prior``, the same rule on its own paths); null when TICA is skipped | higher |
| ``tps_path_frames_mean`` | ``--task tps`` only: mean over successful paths of the frames from the last visit to the start state to the first arrival in the end state | — |

Energy and force metrics (:func:`energy_force_metrics`), for ``energy`` (total,
kcal/mol), ``residue_energy`` (per residue and frame, kcal/mol) and ``force``
(every Cartesian component, kcal/mol/Å):

| key | definition |
|---|---|
| ``<q>_mse_<unit>_sq`` | mean squared error, in unit² |
| ``<q>_rmse_<unit>`` | root mean squared error |
| ``<q>_mae_<unit>`` | mean absolute error |
| ``<q>_r2`` | coefficient of determination 1 − SS_res / SS_tot about the true mean |
| ``<q>_pearson`` | Pearson r of predicted and true |
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import HemeplmError
from .structure import CLASH_SCALE, near_pairs, vdw_radii

log = logging.getLogger(__name__)

TASKS = ("forecast", "tps", "inpaint", "upsample")
#: columns of ``metrics.json`` and :func:`print_table`; ``prior`` only when prior trajectories are given
METHODS = ("model", "static", "random_walk", "prior")
TORSION_TYPES = ("phi", "psi", "chi1", "chi2", "chi3", "chi4")
TORSION_BINS = 36
TICA_BINS = 30
#: TICA uses at most this many sin/cos torsion features, those of largest reference variance
TICA_MAX_FEATURES = 256
#: TICA is fitted only with at least this many time-lagged reference frame pairs per feature (module docstring)
TICA_PAIRS_PER_FEATURE = 4
CONTACT_CUTOFF_A = 4.5
BOND_TOLERANCE_A = 0.1
#: ``bond_ok_fraction_<class>``; :attr:`Geometry.bond_class` indexes this
BOND_CLASSES = ("intra_residue", "peptide", "ligand")
#: ``clashes_per_frame_<class>``, indexed by the number of ligand atoms in the pair
CLASH_CLASSES = ("protein_protein", "protein_ligand", "ligand_ligand")
TPS_STATES = 5
#: the reference's own validity is measured on at most this many evenly spaced frames
REFERENCE_VALIDITY_FRAMES = 200

#: rows of :func:`print_table`: metric key and which direction is better
TABLE_ROWS = (
    ("torsion_jsd", "lower"), ("tica_jsd", "lower"), ("rmsf_pearson", "higher"),
    ("contact_jsd", "lower"), ("contact_pearson", "higher"),
    ("ligand_rmsd_mean_A", "lower"), ("ligand_rmsd_median_A", "lower"),
    ("tic1_decorrelation_ps", "~ref"), ("bond_ok_fraction", "higher"),
    *((f"bond_ok_fraction_{c}", "higher") for c in BOND_CLASSES), ("clashes_per_frame", "lower"),
    *((f"clashes_per_frame_{c}", "lower") for c in CLASH_CLASSES),
    ("ligand_valid_fraction", "higher"), ("tps_success_fraction", "higher"), ("tps_path_frames_mean", ""),
)


# ----------------------------------------------------------------------------- statistics

def jensen_shannon(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen–Shannon divergence (base 2, in 0..1) between weights normalised along ``axis``.

    Args:
        p, q: non-negative arrays of the same shape (histogram counts or frequencies).
    Returns:
        the divergence with ``axis`` removed; NaN where p or q sums to 0.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    sp, sq = p.sum(axis, keepdims=True), q.sum(axis, keepdims=True)
    bad = (np.squeeze(sp, axis) <= 0) | (np.squeeze(sq, axis) <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = p / sp, q / sq
        m = 0.5 * (p + q)
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis)
    return np.where(bad, np.nan, np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0))


def binned(values: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """Histogram counts of K variables on a regular D-dimensional grid.

    Args:
        values: (F, K, D) F samples of K variables with D coordinates each
            (D = 1 for torsions, 2 for TICA projections).
        edges: D increasing arrays of bin edges; values outside fall in the edge bins.
    Returns:
        (K, B_1 * ... * B_D) int64 counts, the last dimension varying fastest.
    """
    n_frames, n_vars, _ = values.shape
    flat = np.zeros((n_frames, n_vars), dtype=np.int64)
    size = 1
    for d, e in enumerate(edges):
        nb = len(e) - 1
        flat = flat * nb + np.clip(np.searchsorted(e, values[..., d], side="right") - 1, 0, nb - 1)
        size *= nb
    flat += np.arange(n_vars) * size
    return np.bincount(flat.ravel(), minlength=n_vars * size).reshape(n_vars, size)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays (flattened); NaN when either is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else math.nan


def decorrelation_time(series: list[np.ndarray], dt_ps: float) -> float:
    """1/e time of the autocorrelation of a scalar observable.

    Args:
        series: per trajectory, (F_s,) values; the autocorrelation pools all
            trajectories around their common mean and variance.
        dt_ps: time between frames.
    Returns:
        first lag (ps, linearly interpolated) where the autocorrelation falls
        below 1/e, searched up to half the longest trajectory; NaN if it does
        not, or if the observable is constant.
    """
    pooled = np.concatenate(series)
    mean, var = pooled.mean(), pooled.var()
    if var <= 1e-12 * max(1.0, float(mean * mean)):
        return math.nan
    n_max = max(len(s) for s in series)
    num, cnt = np.zeros(n_max), np.zeros(n_max)
    for s in series:
        y = s - mean
        spec = np.fft.rfft(y, 2 * len(y))
        num[:len(y)] += np.fft.irfft(spec * spec.conj(), 2 * len(y))[:len(y)]
        cnt[:len(y)] += np.arange(len(y), 0, -1)
    acf = num[: max(2, n_max // 2)] / cnt[: max(2, n_max // 2)] / var
    below = np.flatnonzero(acf < 1.0 / math.e)
    if len(below) == 0:
        return math.nan
    t = int(below[0])
    return (t - 1 + (acf[t - 1] - 1.0 / math.e) / (acf[t - 1] - acf[t])) * dt_ps


# ----------------------------------------------------------------------------- geometry

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


def build_geometry(topology, ligand: np.ndarray, first_frame: np.ndarray, path: str | Path = "topology") -> Geometry:
    """:class:`Geometry` of a system loaded by :func:`~hemeplm.data.load.load_system`.

    Args:
        topology: mdtraj Topology of the kept atoms; ligand: (L,) ligand indices;
        first_frame: (A, 3) Å, used by the token layout; path: named in errors.
    """
    from .data.residues import TORSION_NAMES
    from .data.tokens import build_layout

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
    return Geometry(
        topology=topology, ca=ca, residue_labels=[f"{r.name}{r.resSeq}" for r in residues],
        residue_numbers=np.array([r.resSeq for r in residues]), protein=protein,
        residue_of=np.array([position.get(topology.atom(int(i)).residue.index, -1) for i in protein], dtype=np.int64),
        ligand=np.asarray(ligand, dtype=np.int64), is_ligand=is_ligand, torsions=quads[defined],
        torsion_type=kinds[defined], bonds=bonds, bond_class=bond_class, radii=radii,
        excluded=near[:, 0] * n + near[:, 1],
        ligand_bonds={tuple(sorted((local[int(i)], local[int(j)]))) for i, j in bonds
                      if int(i) in local and int(j) in local}, symbols=symbols)


def superpose(x: np.ndarray, ca: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Superpose every frame on ``target`` by its Cα.

    Args:
        x: (F, A, 3) Å; ca: (C,) indices; target: (C, 3) Å.
    Returns:
        (F, A, 3) superposed coordinates.
    """
    from .data.load import kabsch

    rot, trans = kabsch(x[:, ca].astype(np.float64), target.astype(np.float64))
    return (np.einsum("fij,faj->fai", rot, x) + trans[:, None]).astype(np.float32)


def torsion_angles(x: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Dihedral angles (rad, in -π..π) of (F, A, 3) coordinates for (T, 4) atom quadruples -> (F, T)."""
    import torch

    from .data.tokens import dihedrals

    return dihedrals(torch.from_numpy(np.asarray(x, dtype=np.float64)), torch.from_numpy(quads)).numpy()


def rmsf(x: np.ndarray) -> np.ndarray:
    """Root-mean-square fluctuation (Å) about the mean of (F, K, 3) superposed coordinates -> (K,).

    Displacements from frame 0 are averaged (float64), so identical frames give exactly 0.
    """
    d = x.astype(np.float64) - x[0]
    return np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean(0))


def contact_frequency(x: np.ndarray, geom: Geometry, cutoff: float = CONTACT_CUTOFF_A) -> np.ndarray:
    """Per-residue protein–ligand contact frequency.

    Args:
        x: (F, A, 3) Å.
    Returns:
        (R,) fraction of frames in which any heavy atom of the residue lies within
        ``cutoff`` Å of any ligand heavy atom.
    """
    from scipy.spatial import cKDTree

    keep = geom.residue_of >= 0
    atoms, res = geom.protein[keep], geom.residue_of[keep]
    counts = np.zeros(len(geom.ca))
    for frame in x:
        dist, _ = cKDTree(frame[geom.ligand]).query(frame[atoms], distance_upper_bound=cutoff)
        counts[np.unique(res[np.isfinite(dist)])] += 1
    return counts / len(x)


def rmsd_pairing(n_generated: int, n_reference: int) -> str:
    """How :func:`ligand_rmsd` pairs generated with reference frames, in words."""
    if n_generated == n_reference:
        return "frame i against reference frame i"
    return "nearest reference frame (the frame counts differ)"


def ligand_rmsd(gen: np.ndarray, ref: np.ndarray, geom: Geometry) -> np.ndarray:
    """Ligand heavy-atom RMSD (Å) of generated frames to the reference, protein Cα superposed.

    Args:
        gen: (F, A, 3) and ref: (F', A, 3), both already in the common Cα frame.
    Returns:
        (F,) RMSD: frame i against reference frame i (each pair superposed on Cα)
        when F == F', else against the nearest reference frame (:func:`rmsd_pairing`).
    """
    from scipy.spatial.distance import cdist

    from .data.load import kabsch

    lig, n_lig = geom.ligand, len(geom.ligand)
    if len(gen) == len(ref):
        out = np.empty(len(gen))
        for i in range(len(gen)):
            rot, trans = kabsch(gen[i:i + 1, geom.ca].astype(np.float64), ref[i, geom.ca].astype(np.float64))
            moved = gen[i, lig] @ rot[0].T + trans[0]
            out[i] = np.sqrt(((moved - ref[i, lig]) ** 2).sum(-1).mean())
        return out
    ref_lig = ref[:, lig].reshape(len(ref), -1).astype(np.float64)
    out = np.concatenate([cdist(chunk[:, lig].reshape(len(chunk), -1), ref_lig).min(1)
                          for chunk in np.array_split(gen, max(1, len(gen) // 256))])
    return out / math.sqrt(n_lig)


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


def clashes_by_kind(x: np.ndarray, geom: Geometry) -> dict:
    """Mean number per frame of non-bonded heavy-atom pairs closer than 0.75 × (r_i + r_j), in total and by kind.

    1-2 and 1-3 neighbours and metal atoms are left out; pairs come from a
    k-d tree search, so the cost is linear in atoms.

    Args:
        x: (F, A, 3) Å.
    Returns:
        ``clashes_per_frame`` and ``clashes_per_frame_<kind>`` for each of :data:`CLASH_CLASSES`
        (pairs with 0, 1 or 2 ligand atoms; they sum to the total; the two with ligand NaN without ligand).
    """
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    n = x.shape[1]
    idx = np.flatnonzero(geom.radii > 0)
    radius = CLASH_SCALE * 2 * geom.radii.max()
    counts = np.zeros(len(CLASH_CLASSES), dtype=np.int64)
    for frame in tqdm(x, desc="clashes", leave=False, disable=None):
        pairs = cKDTree(frame[idx]).query_pairs(radius, output_type="ndarray")
        i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
        close = np.linalg.norm(frame[i] - frame[j], axis=-1) < CLASH_SCALE * (geom.radii[i] + geom.radii[j])
        close &= ~np.isin(i * n + j, geom.excluded)
        kind = geom.is_ligand[i[close]].astype(np.int64) + geom.is_ligand[j[close]]
        counts += np.bincount(kind, minlength=len(CLASH_CLASSES))
    out = {"clashes_per_frame": float(counts.sum()) / len(x)}
    for k, name in enumerate(CLASH_CLASSES):
        out[f"clashes_per_frame_{name}"] = float(counts[k]) / len(x) if k == 0 or len(geom.ligand) else math.nan
    return out


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

    from .data.ligand import METALS

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


def transition_paths(labels: list[np.ndarray], end_states: list[int]) -> dict:
    """Success and length of transition paths over discrete states.

    Args:
        labels: per path, (F_s,) state of every frame; end_states: per path, the target state.
    Returns:
        ``tps_success_fraction`` (paths that leave the state of frame 0 and later
        reach the end state) and ``tps_path_frames_mean`` (frames from the last
        visit to the start state to the first arrival, over successful paths; NaN if none).
    """
    lengths = []
    for lab, end in zip(labels, end_states):
        left = np.flatnonzero(lab != lab[0])
        if len(left) == 0:
            continue
        arrive = left[0] + np.flatnonzero(lab[left[0]:] == end)
        if len(arrive):
            lengths.append(int(arrive[0] - np.flatnonzero(lab[:arrive[0]] == lab[0])[-1]))
    return {"tps_success_fraction": len(lengths) / len(labels),
            "tps_path_frames_mean": float(np.mean(lengths)) if lengths else math.nan}


# ----------------------------------------------------------------------------- reference and ensembles

def _sin_cos(angles: np.ndarray) -> np.ndarray:
    """(F, T) angles -> (F, 2T) TICA features."""
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _tica_histogram(projections: list[np.ndarray], edges: list[np.ndarray]) -> np.ndarray:
    """Per trajectory (F_s, 2) TIC1/TIC2 -> (B1, B2) counts of all frames."""
    return binned(np.concatenate(projections)[:, None], edges)[0].reshape(len(edges[0]) - 1, -1)


@dataclass
class Reference:
    """Everything fitted on or measured in the reference ensemble.

    Attributes (F reference frames, T torsions, R residues, B bonds):
        geom: the system's :class:`Geometry`.
        frames: (F, A, 3) all reference frames, Å, common Cα frame.
        torsion_edges: (37,) bin edges (rad); torsion_hist: (T, 36) counts.
        tica: fitted deeptime TICA model, or None when skipped (too few reference frames);
        tica_features: indices of the sin/cos features it uses (or would use);
        tica_note: what TICA was fitted on, or ``"skipped: ..."`` and why (``info.tica``);
        tica_edges: two (31,) edge arrays; tica_hist: (30, 30) counts; both None when skipped.
        rmsf: (R,) Å; contacts: (R,) frequencies or None without ligand.
        bond_lengths: (B,) mean lengths, Å.
        step_sigma: (A,) per-atom, per-coordinate step standard deviation (Å) over one generated frame step.
        projections: per reference trajectory, (F_s, 2) TIC1/TIC2; None when TICA is skipped.
        dt_ps: time between reference frames; lag_frames: TICA lag.
    """

    geom: Geometry
    frames: np.ndarray
    torsion_edges: np.ndarray
    torsion_hist: np.ndarray
    tica: object | None
    tica_features: np.ndarray
    tica_note: str
    tica_edges: list | None
    tica_hist: np.ndarray | None
    rmsf: np.ndarray
    contacts: np.ndarray | None
    bond_lengths: np.ndarray
    step_sigma: np.ndarray
    projections: list | None
    dt_ps: float
    lag_frames: int


def fit_tica(features: list[np.ndarray], lag_frames: int) -> tuple[object | None, np.ndarray, str]:
    """TICA on the reference's sin/cos torsion features, if it has enough frames for them.

    Enough means at least :data:`TICA_PAIRS_PER_FEATURE` time-lagged frame pairs (t, t + lag),
    pooled over the trajectories, per feature used (why: module docstring).

    Args:
        features: per reference trajectory, (F_s, 2T) sin/cos features; lag_frames: TICA lag.
    Returns:
        the fitted deeptime TICA model (None when skipped), the indices of the (at most
        :data:`TICA_MAX_FEATURES`) features of largest variance it uses, and a sentence for
        ``info.tica``: what it was fitted on, or ``"skipped: ..."`` with the reason.
    """
    from deeptime.decomposition import TICA

    chosen = np.sort(np.argsort(-np.concatenate(features).var(0), kind="stable")[:TICA_MAX_FEATURES])
    pairs = sum(max(0, len(f) - lag_frames) for f in features)
    need = TICA_PAIRS_PER_FEATURE * len(chosen)
    counts = (f"{pairs} time-lagged frame pairs from {sum(map(len, features))} reference frames at a lag of "
              f"{lag_frames} frame{'s' * (lag_frames != 1)} for {len(chosen)} TICA features")
    if pairs < need:
        return None, chosen, (f"skipped: {counts}; need at least {need} ({TICA_PAIRS_PER_FEATURE} per feature) "
                              "for a well-conditioned covariance estimate")
    tica = TICA(lagtime=lag_frames, dim=2).fit([f[:, chosen] for f in features if len(f) > lag_frames])
    return tica.fetch_model(), chosen, f"fitted on {counts}"


def fit_reference(geom: Geometry, segments: list[np.ndarray], dt_ps: float, lag_frames: int, generated_dt_ps: float,
                  path: str | Path = "reference") -> Reference:
    """Fit TICA (when the reference is long enough, see :func:`fit_tica`) and measure the reference ensemble.

    The random-walk step variance is the per-atom variance of reference
    displacements over the number of frames nearest to ``generated_dt_ps``
    (at least one), scaled linearly in time to exactly ``generated_dt_ps``.

    Args:
        segments: per reference trajectory, (F_s, A, 3) Å in the common Cα frame.
        dt_ps: time between reference frames; lag_frames: TICA lag;
        generated_dt_ps: time between generated frames; path: named in errors.
    """
    step_frames = max(1, round(generated_dt_ps / dt_ps))
    moved = [s[step_frames:] - s[:-step_frames] for s in segments if len(s) > step_frames]
    if not moved:
        raise HemeplmError(f"no reference trajectory is longer than the generated step ({step_frames} frames)", path)
    step_var = sum((d.astype(np.float64) ** 2).sum((0, 2)) for d in moved) / (3 * sum(len(d) for d in moved))
    step_var *= generated_dt_ps / (step_frames * dt_ps)
    angles = [torsion_angles(s, geom.torsions) for s in segments]
    features = [_sin_cos(a) for a in angles]
    tica, chosen, note = fit_tica(features, lag_frames)
    projections = tica_edges = tica_hist = None
    if tica is not None:
        projections = [tica.transform(f[:, chosen])[:, :2] for f in features]
        pooled = np.concatenate(projections)
        lo, hi = pooled.min(0), pooled.max(0)
        tica_edges = [np.linspace(lo[d], max(hi[d], lo[d] + 1e-9), TICA_BINS + 1) for d in range(2)]
        tica_hist = _tica_histogram(projections, tica_edges)
    frames = np.concatenate(segments)
    torsion_edges = np.linspace(-np.pi, np.pi, TORSION_BINS + 1)
    return Reference(
        geom=geom, frames=frames, torsion_edges=torsion_edges,
        torsion_hist=binned(np.concatenate(angles)[..., None], [torsion_edges]),
        tica=tica, tica_features=chosen, tica_note=note, tica_edges=tica_edges, tica_hist=tica_hist,
        rmsf=rmsf(frames[:, geom.ca]), contacts=contact_frequency(frames, geom) if len(geom.ligand) else None,
        bond_lengths=bond_lengths(frames, geom).mean(0), step_sigma=np.sqrt(step_var), projections=projections,
        dt_ps=dt_ps, lag_frames=lag_frames)


def tic1_decorrelation(projections: list[np.ndarray] | None, dt_ps: float) -> float:
    """:func:`decorrelation_time` of TIC1 from per-trajectory (F_s, 2) projections; NaN when TICA was skipped (None)."""
    return math.nan if projections is None else decorrelation_time([p[:, 0] for p in projections], dt_ps)


@dataclass
class Comparison:
    """One ensemble measured against the reference.

    Attributes:
        metrics: the metric dict (NaN where undefined, see the module table).
        rmsf: (R,) Å; contacts: (R,) or None; tica_hist: (30, 30) counts;
        projections: per trajectory, (F_s, 2) TIC1/TIC2; both None when TICA was skipped.
    """

    metrics: dict
    rmsf: np.ndarray
    contacts: np.ndarray | None
    tica_hist: np.ndarray | None
    projections: list | None


def compare(ref: Reference, segments: list[np.ndarray], dt_ps: float) -> Comparison:
    """Measure generated trajectories against the reference.

    Args:
        segments: per generated trajectory, (F_s, A, 3) Å in the common Cα frame.
        dt_ps: time between generated frames.
    """
    geom = ref.geom
    frames = np.concatenate(segments)
    angles = [torsion_angles(s, geom.torsions) for s in segments]
    jsd = jensen_shannon(ref.torsion_hist, binned(np.concatenate(angles)[..., None], [ref.torsion_edges]))
    metrics = {"torsion_jsd": float(jsd.mean())}
    for t in TORSION_TYPES:
        sel = geom.torsion_type == t
        metrics[f"torsion_jsd_{t}"] = float(jsd[sel].mean()) if sel.any() else math.nan
    projections = tica_hist = None
    metrics["tica_jsd"] = math.nan
    if ref.tica is not None:
        projections = [ref.tica.transform(_sin_cos(a)[:, ref.tica_features])[:, :2] for a in angles]
        tica_hist = _tica_histogram(projections, ref.tica_edges)
        metrics["tica_jsd"] = float(jensen_shannon(ref.tica_hist.ravel(), tica_hist.ravel()))
    fluct = rmsf(frames[:, geom.ca])
    metrics["rmsf_pearson"] = pearson(fluct, ref.rmsf)
    contacts = None
    if len(geom.ligand):
        contacts = contact_frequency(frames, geom)
        rmsd = ligand_rmsd(frames, ref.frames, geom)
        metrics.update(contact_jsd=float(jensen_shannon(contacts, ref.contacts)),
                       contact_pearson=pearson(contacts, ref.contacts),
                       ligand_rmsd_mean_A=float(rmsd.mean()), ligand_rmsd_median_A=float(np.median(rmsd)))
    else:
        metrics.update(contact_jsd=math.nan, contact_pearson=math.nan,
                       ligand_rmsd_mean_A=math.nan, ligand_rmsd_median_A=math.nan)
    metrics["tic1_decorrelation_ps"] = tic1_decorrelation(projections, dt_ps)
    metrics.update(validity(frames, ref))
    metrics.update(tps_success_fraction=math.nan, tps_path_frames_mean=math.nan)  # set by --task tps
    return Comparison(metrics=metrics, rmsf=fluct, contacts=contacts, tica_hist=tica_hist, projections=projections)


def validity(frames: np.ndarray, ref: Reference) -> dict:
    """``bond_ok_fraction*``, ``clashes_per_frame*`` and ``ligand_valid_fraction`` of (F, A, 3) frames."""
    geom = ref.geom
    return {**bond_ok_fractions(frames, geom, ref.bond_lengths), **clashes_by_kind(frames, geom),
            "ligand_valid_fraction": ligand_valid_fraction(frames, geom) if len(geom.ligand) else math.nan}


def baselines(segments: list[np.ndarray], ref: Reference, seed: int) -> dict[str, list[np.ndarray]]:
    """The ``static`` and ``random_walk`` baselines for generated trajectories.

    Args:
        segments: per generated trajectory, (F_s, A, 3) Å.
    Returns:
        name -> per trajectory (F_s, A, 3) Å, in the common Cα frame.
    """
    rng = np.random.default_rng(seed)
    target = ref.frames[0, ref.geom.ca]
    walks = []
    for s in segments:
        steps = rng.normal(size=(len(s) - 1, s.shape[1], 3)) * ref.step_sigma[None, :, None]
        walk = s[0].astype(np.float64) + np.concatenate([np.zeros((1, s.shape[1], 3)), np.cumsum(steps, 0)])
        walks.append(superpose(walk, ref.geom.ca, target))
    return {"static": [np.repeat(s[:1], len(s), axis=0) for s in segments], "random_walk": walks}


# ----------------------------------------------------------------------------- the evaluate command

def _check_same_atoms(ref_sys, gen_sys, path: str | Path) -> None:
    """Raise :class:`HemeplmError` naming ``path`` unless both systems keep the same atoms (by name)."""
    ref_atoms = [f"{a.residue.name}{a.residue.resSeq}:{a.name}" for a in ref_sys.topology.atoms]
    gen_atoms = [f"{a.residue.name}{a.residue.resSeq}:{a.name}" for a in gen_sys.topology.atoms]
    if len(ref_atoms) != len(gen_atoms):
        raise HemeplmError(f"has {len(gen_atoms)} protein/ligand heavy atoms but the reference has {len(ref_atoms)}",
                           path)
    diff = [k for k, (a, b) in enumerate(zip(ref_sys.topology.atoms, gen_sys.topology.atoms)) if a.name != b.name]
    if diff:
        raise HemeplmError(f"atom {diff[0]} is {gen_atoms[diff[0]]} but the reference's is {ref_atoms[diff[0]]}", path)
    if not np.array_equal(ref_sys.ligand, gen_sys.ligand):
        raise HemeplmError(f"ligand selection gives {len(gen_sys.ligand)} atoms here and {len(ref_sys.ligand)} "
                           "in the reference", path)


def json_ready(value):
    """Numbers, arrays and dicts as JSON values; NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def evaluate_trajectories(topology: str | Path, reference: list[str | Path], generated: list[str | Path],
                          out_dir: str | Path, ligand: str | None = None, lag_ps: float | None = None,
                          task: str = "forecast", generated_topology: str | Path | None = None,
                          generated_timestep_ps: float | None = None, seed: int = 0, force: bool = False,
                          prior: list[str | Path] | None = None) -> dict:
    """Compare generated trajectories with reference MD; write metrics.json and figures.

    Args:
        topology: topology of the reference trajectories (and of the generated ones
            unless ``generated_topology`` is given).
        reference, generated: trajectory files, one per trajectory.
        out_dir: gets ``metrics.json``, ``rmsf.png``, (when TICA is fitted) ``tica_fes.png`` and
            (with a ligand) ``contacts.png``.
        ligand: mdtraj selection (see :func:`~hemeplm.data.load.select_ligand`).
        lag_ps: TICA lag time; default one reference frame.
        task: one of :data:`TASKS`; ``tps`` adds the transition-path metrics.
        generated_timestep_ps: time between generated frames; default the reference's.
        seed: random-walk baseline and k-means.
        force: overwrite an existing ``metrics.json``.
        prior: trajectory files of the ``prior`` baseline (the same checkpoint sampled with its
            network output zeroed), read like ``generated``; None or empty leaves the column out.
    Returns:
        the metrics (as written, NaN as None).
    """
    from . import plots
    from .data.load import load_system

    out = Path(out_dir)
    if (out / "metrics.json").exists() and not force:
        raise HemeplmError("already exists; pass --force to overwrite", out / "metrics.json")
    if task not in TASKS:
        raise HemeplmError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if not generated:
        raise HemeplmError("no generated trajectory given")
    ref_sys = load_system(topology, reference, ligand=ligand)
    gen_top = generated_topology or topology

    def load_like_generated(files: list[str | Path]):
        system = load_system(gen_top, files, ligand=ligand)
        _check_same_atoms(ref_sys, system, gen_top)
        return system

    gen_sys = load_like_generated(generated)
    prior_sys = load_like_generated(prior) if prior else None
    dt_ref = ref_sys.timestep_ps
    dt_gen = generated_timestep_ps or dt_ref
    lag = max(1, round((lag_ps or dt_ref) / dt_ref))
    geom = build_geometry(ref_sys.topology, ref_sys.ligand, ref_sys.segments[0][0], topology)
    ref = fit_reference(geom, ref_sys.segments, dt_ref, lag, dt_gen, ref_sys.files[0])
    target = ref.frames[0, geom.ca]
    model = [superpose(s, geom.ca, target) for s in gen_sys.segments]
    ensembles = {"model": model, **baselines(model, ref, seed)}
    if prior_sys is not None:
        ensembles["prior"] = [superpose(s, geom.ca, target) for s in prior_sys.segments]
    results = {name: compare(ref, segs, dt_gen) for name, segs in ensembles.items()}
    info = {
        "topology": str(topology), "generated_topology": str(gen_top),
        "reference_files": ref_sys.files, "generated_files": gen_sys.files, "task": task, "seed": seed,
        "n_atoms": geom.topology.n_atoms, "n_ligand_atoms": len(geom.ligand), "n_residues": len(geom.ca),
        "n_torsions": len(geom.torsions), "n_bonds": len(geom.bonds),
        "n_bonds_by_class": {c: int((geom.bond_class == k).sum()) for k, c in enumerate(BOND_CLASSES)},
        "reference_frames": [len(s) for s in ref_sys.segments], "generated_frames": [len(s) for s in model],
        "reference_timestep_ps": dt_ref, "generated_timestep_ps": dt_gen,
        "tica_lag_ps": lag * dt_ref, "tica_lag_frames": lag, "tica": ref.tica_note,
        "tica_features": f"{len(ref.tica_features)} sin/cos of phi, psi, chi1-4 of largest reference variance",
        "tica_histogram": f"2-D, {TICA_BINS}x{TICA_BINS} bins over the reference's TIC1/TIC2 range",
        "torsion_bins": TORSION_BINS, "contact_cutoff_A": CONTACT_CUTOFF_A,
        "ligand_rmsd_pairing": rmsd_pairing(sum(map(len, model)), len(ref.frames)),
        "reference": _reference_info(ref),
    }
    if prior_sys is not None:
        info.update(prior_files=prior_sys.files, prior_frames=[len(s) for s in ensembles["prior"]],
                    prior_ligand_rmsd_pairing=rmsd_pairing(sum(map(len, ensembles["prior"])), len(ref.frames)))
    if task == "tps":
        info.update(_add_tps(ref, results, len(ref_sys.segments), seed))
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if ref.tica is not None:
        fes = {"reference": ref.tica_hist, **{k: results[k].tica_hist for k in ("model", "prior") if k in results}}
        figures.append(plots.tica_fes(fes, ref.tica_edges, out / "tica_fes.png"))
    figures.append(plots.rmsf_plot({"reference": ref.rmsf, **{k: r.rmsf for k, r in results.items()}},
                                   geom.residue_numbers, out / "rmsf.png"))
    if len(geom.ligand):
        figures.append(plots.contact_plot({"reference": ref.contacts, **{k: r.contacts for k, r in results.items()}},
                                          geom.residue_labels, out / "contacts.png"))
    info["figures"] = [f.name for f in figures]
    metrics = json_ready({**{k: r.metrics for k, r in results.items()}, "info": info})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _reference_info(ref: Reference) -> dict:
    """The reference's own decorrelation time and validity (on at most 200 evenly spaced frames)."""
    take = np.unique(np.linspace(0, len(ref.frames) - 1, min(len(ref.frames), REFERENCE_VALIDITY_FRAMES)).astype(int))
    return {"tic1_decorrelation_ps": tic1_decorrelation(ref.projections, ref.dt_ps), **validity(ref.frames[take], ref)}


def _add_tps(ref: Reference, results: dict[str, Comparison], n_ref_segments: int, seed: int) -> dict:
    """Add the transition-path metrics to every result; return what goes into ``info``.

    The baselines start from the model's paths and take the model's end states; ``prior`` takes its
    own. When TICA was skipped the metrics stay NaN and ``info.tps`` gives the reason.
    """
    from deeptime.clustering import KMeans

    if ref.tica is None:
        return {"tps": ref.tica_note}
    kmeans = KMeans(n_clusters=TPS_STATES, fixed_seed=seed).fit(np.concatenate(ref.projections)).fetch_model()

    def end_states(paths: list[np.ndarray]) -> tuple[list[int], str]:
        paired = n_ref_segments == len(paths)
        how = ("state of the last frame of the paired reference trajectory" if paired
               else "state of each path's own last (conditioned) frame")
        return [int(kmeans.transform(p[-1:])[0]) for p in (ref.projections if paired else paths)], how

    model_ends, how = end_states(results["model"].projections)
    info = {"tps_states": TPS_STATES, "tps_end_state": how}
    for name, r in results.items():
        ends = model_ends
        if name == "prior":
            ends, info["prior_tps_end_state"] = end_states(r.projections)
        r.metrics.update(transition_paths([kmeans.transform(p) for p in r.projections], ends))
    return info


def print_table(metrics: dict) -> str:
    """The main scalar metrics, model vs the baselines (prior when present) and the reference where it has a value.

    Args:
        metrics: what :func:`evaluate_trajectories` returns (or ``metrics.json`` holds).
    Returns:
        a fixed-width text table, one column per method of :data:`METHODS` present in ``metrics``;
        metrics undefined for every method are left out.
    """
    def missing(v) -> bool:
        return v is None or v != v

    ref = metrics.get("info", {}).get("reference", {})
    methods = [m for m in METHODS if m in metrics]
    cols = ("metric", "better", *methods, "reference")
    rows = []
    for key, better in TABLE_ROWS:
        values = [metrics[m].get(key) for m in methods]
        if all(missing(v) for v in values):
            continue
        rows.append((key, better, *("-" if missing(v) else f"{v:.4g}" for v in (*values, ref.get(key)))))
    widths = [max(len(str(r[k])) for r in (cols, *rows)) for k in range(len(cols))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (cols, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cmd_evaluate(args) -> None:
    metrics = evaluate_trajectories(args.topology, args.reference, args.generated, args.out, ligand=args.ligand,
                                    lag_ps=args.lag_ps, task=args.task, generated_topology=args.generated_topology,
                                    generated_timestep_ps=args.generated_timestep_ps, seed=args.seed,
                                    force=args.force, prior=args.prior)
    print(print_table(metrics))
    print(f"{Path(args.out) / 'metrics.json'}; figures: {', '.join(metrics['info']['figures'])}")
    if metrics["info"]["tica"].startswith("skipped"):
        print(f"TICA {metrics['info']['tica']}")


def add_evaluate_parser(sub) -> None:
    """Add the ``evaluate`` subcommand to the ``hemeplm`` argument parser's subparsers."""
    e = sub.add_parser("evaluate", help="compare generated trajectories with reference MD (metrics.json, figures)")
    e.add_argument("--topology", required=True, help="topology of the reference trajectories")
    e.add_argument("--reference", nargs="+", required=True, help="reference MD trajectory file(s)")
    e.add_argument("--generated", nargs="+", required=True, help="generated trajectory file(s)")
    e.add_argument("--prior", nargs="+", default=None, metavar="GEN",
                   help="trajectory file(s) sampled from the same checkpoint with the network output zeroed, "
                        "like --generated: evaluated as the 'prior' baseline column")
    e.add_argument("--generated-topology", default=None,
                   help="topology of the generated (and --prior) files (default: --topology)")
    e.add_argument("--ligand", default=None, help="mdtraj selection; 'none' for protein only; unset = detect")
    e.add_argument("--lag-ps", type=float, default=None, help="TICA lag time (default: one reference frame)")
    e.add_argument("--generated-timestep-ps", type=float, default=None,
                   help="time between generated frames (default: the reference's)")
    e.add_argument("--task", choices=TASKS, default="forecast", help="tps adds transition-path metrics")
    e.add_argument("--seed", type=int, default=0, help="seed of the random-walk baseline and k-means")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--force", action="store_true", help="overwrite an existing metrics.json")
    e.set_defaults(func=_cmd_evaluate)


# ----------------------------------------------------------------------------- energies and forces

def regression_metrics(pred: np.ndarray, true: np.ndarray, name: str, unit: str) -> dict:
    """MSE, RMSE, MAE, R² and Pearson r of predicted vs true values (flattened).

    Args:
        name: quantity prefix of the keys; unit: unit tag of the keys (``kcal_mol``, ``kcal_mol_A``).
    """
    pred, true = np.ravel(pred).astype(np.float64), np.ravel(true).astype(np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"{name}: predicted has {pred.size} values, true has {true.size}")
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    mse = float((err ** 2).mean())
    return {f"{name}_mse_{unit}_sq": mse, f"{name}_rmse_{unit}": math.sqrt(mse),
            f"{name}_mae_{unit}": float(np.abs(err).mean()),
            f"{name}_r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan,
            f"{name}_pearson": pearson(pred, true)}


def energy_force_metrics(pred_energy: np.ndarray, true_energy: np.ndarray, pred_forces: np.ndarray,
                         true_forces: np.ndarray, pred_res_energy: np.ndarray | None = None,
                         true_res_energy: np.ndarray | None = None) -> dict:
    """Energy, per-residue energy and force errors (see the module table).

    Args:
        pred_energy, true_energy: (F,) total energies in kcal/mol.
        pred_forces, true_forces: (F, A, 3) forces in kcal/mol/Å.
        pred_res_energy, true_res_energy: (F, R) per-residue energies in kcal/mol, or None
            (residue metrics are then left out).
    Returns:
        ``energy_*``, ``force_*`` and, with residue energies, ``residue_energy_*`` keys.
    """
    out = regression_metrics(pred_energy, true_energy, "energy", "kcal_mol")
    if pred_res_energy is not None and true_res_energy is not None:
        out.update(regression_metrics(pred_res_energy, true_res_energy, "residue_energy", "kcal_mol"))
    out.update(regression_metrics(pred_forces, true_forces, "force", "kcal_mol_A"))
    return out


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def evaluate_energies(predict: Callable[[np.ndarray], dict], coords: np.ndarray, true_energy: np.ndarray,
                      true_forces: np.ndarray, topology, out_dir: str | Path,
                      true_res_energy: np.ndarray | None = None, batch_frames: int = 16) -> tuple[dict, list[Path]]:
    """Predict energies and forces of MD frames and compare them with the MD's.

    Args:
        predict: ``predict(coords (F', A, 3) Å) -> {"energy": (F',), "forces": (F', A, 3),
            "residue_energy": (F', R)}`` in kcal/mol and kcal/mol/Å (numpy or torch;
            ``residue_energy`` optional), called on batches of ``batch_frames`` frames.
        coords: (F, A, 3) Å.
        true_energy: (F,) kcal/mol; true_forces: (F, A, 3) kcal/mol/Å.
        topology: mdtraj Topology of the A atoms (R residues) for the B-factor PDBs.
        out_dir: gets ``energy_parity.png``, ``force_parity.png``, ``energy_histogram.png``,
            ``force_error.pdb`` (per-residue mean |ΔF| in kcal/mol/Å as B-factor of frame 0) and,
            with residue energies, ``residue_energy_error.png`` and ``residue_energy_error.pdb``
            (mean |ΔE_res| in kcal/mol; written when R equals the topology's residue count).
        true_res_energy: (F, R) kcal/mol, or None.
    Returns:
        the metrics of :func:`energy_force_metrics` and the files written.
    """
    from tqdm import tqdm

    from . import plots

    out = Path(out_dir)
    starts = range(0, len(coords), batch_frames)
    preds = [predict(coords[i:i + batch_frames]) for i in tqdm(starts, desc="energies", leave=False,
                                                                disable=len(starts) < 2 or None)]
    pe = np.concatenate([_as_numpy(p["energy"]).reshape(-1) for p in preds])
    pf = np.concatenate([_as_numpy(p["forces"]) for p in preds])
    pr = np.concatenate([_as_numpy(p["residue_energy"]) for p in preds]) \
        if true_res_energy is not None and all("residue_energy" in p for p in preds) else None
    metrics = energy_force_metrics(pe, true_energy, pf, true_forces, pr, true_res_energy)
    atom_res = np.array([a.residue.index for a in topology.atoms])
    force_err = np.linalg.norm(pf - true_forces, axis=-1).mean(0)          # (A,)
    per_res = np.bincount(atom_res, force_err, topology.n_residues) / np.maximum(
        np.bincount(atom_res, minlength=topology.n_residues), 1)
    files = [plots.parity_plot(pe, true_energy, out / "energy_parity.png", "energy", "kcal/mol"),
             plots.parity_plot(pf, true_forces, out / "force_parity.png", "force component", "kcal/mol/Å"),
             plots.energy_histograms(pe, np.asarray(true_energy), out / "energy_histogram.png"),
             plots.write_bfactor_pdb(topology, coords[0], per_res, out / "force_error.pdb")]
    if pr is not None:
        files.append(plots.residue_error_heatmap(pr - true_res_energy, out / "residue_energy_error.png"))
        if pr.shape[1] == topology.n_residues:
            files.append(plots.write_bfactor_pdb(topology, coords[0], np.abs(pr - true_res_energy).mean(0),
                                                 out / "residue_energy_error.pdb"))
        else:
            log.warning("residue energies have %d residues, topology %d: no residue_energy_error.pdb",
                        pr.shape[1], topology.n_residues)
    return metrics, files


# ----------------------------------------------------------------------------- wandb

def log_to_wandb(run, metrics: dict, figures: list[str | Path], step: int | None = None) -> dict:
    """Log scalar metrics and figures to a wandb run.

    Nested dicts are flattened with ``/`` (``model/torsion_jsd``); values that
    are not finite numbers (None, NaN, strings, lists) are skipped. Figures go
    under ``figures/<file stem>`` as ``wandb.Image``.

    Args:
        run: a ``wandb.init`` run; metrics: e.g. ``metrics.json``'s content; figures: PNG paths.
    Returns:
        the dict passed to ``run.log``.
    """
    import wandb

    def flat(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}/")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                    and math.isfinite(float(v)):
                yield f"{prefix}{k}", float(v)

    payload = dict(flat(metrics))
    payload.update({f"figures/{Path(f).stem}": wandb.Image(str(f)) for f in figures})
    run.log(payload, step=step)
    return payload
