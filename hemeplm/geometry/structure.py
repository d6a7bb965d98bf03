"""Structure terms on coordinates: the geometry that rigid tokens plus torsions leave free.

Inside a token every bond and angle is exact by construction
(:mod:`hemeplm.data.internal`). Between tokens nothing is: the peptide bond
C(i)-N(i+1) and its angles, bonds between ligand groups, and steric clashes.
Training adds these terms, computed on the decoded estimate of the clean
frames, to the diffusion loss (weighted toward low noise):

* ``bond``: mean squared deviation (Å²) of the distances of 1-2 and 1-3 atom pairs that
  join two tokens from their length in the first training frame;
* ``clash``: per frame, the sum over non-bonded atom pairs (1-2 and 1-3 neighbours and
  metals left out) of ``max(0, CLASH_SCALE · (r_i + r_j) - d)²`` (Å²), with r the van der
  Waals radii: the clash definition of ``hemeplm evaluate``, made soft;
* ``contact``: mean squared error (Å²) of the distances of the non-bonded atom pairs within
  :data:`CONTACT_REACH_A` of each other in the true frame (FrameDiff's pairwise distance loss,
  over all heavy atoms): it holds the packing both ways, where ``clash`` only pushes atoms apart;
* ``ligand_contact``: the same over the pairs with a ligand atom alone, which the mean over all pairs
  dilutes (the demo's xylene has about a hundred of T4L's 11,000): it holds the ligand in its pocket.

All are ~0 on MD frames (``contact`` and ``ligand_contact`` exactly 0 on their own true frame) and grow
as the geometry is perturbed. Sampling can also :func:`project` its output: a short minimisation of the
bond and clash terms, plus the peptide-bond terms of :func:`peptide_penalty` (ω planar, the two backbone angles
across the bond), over the generated internal coordinates (``structure.project_steps``).

Peptide bonds (:func:`peptide_quads`, :func:`peptide_geometry`) are the topology's C(i)–N(i+1)
bonds no longer than :data:`PEPTIDE_BOND_MAX_A` in the first frame (a longer one is a chain break
that the topology bonded anyway), each described by its quad CA(i), C(i), N(i+1), CA(i+1).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from hemeplm.geometry.rigid import residue_frames
from hemeplm.geometry.torsion import bond_angle, dihedral_angle

#: a non-bonded pair closer than this times the sum of the van der Waals radii clashes
CLASH_SCALE = 0.75
#: the projection pushes pairs out to this (a margin over CLASH_SCALE: a quadratic penalty leaves pairs just inside)
PROJECT_CLASH_SCALE = 0.8
#: Å; Cα pairs closer than this in the first training frame are the fold's restraint pairs
FOLD_CUTOFF = 10.0
#: Å; the smallest spread a fold pair is allowed
FOLD_MIN_SPREAD = 0.1
#: Å; a topology bond C(i)-N(i+1) longer than this in the first frame is a chain break, not a peptide bond
PEPTIDE_BOND_MAX_A = 3.0
#: the two backbone angles across the peptide bond: (mean, σ) in degrees; means of Engh & Huber (1991), spreads
#: of AlphaFold's between-residue angle statistics (residue_constants: 1.995° and 2.315°, rounded)
PEPTIDE_ANGLES = {"ca_c_n": (116.2, 2.0), "c_n_ca": (121.7, 2.3)}
#: the projection's flat bottom for those angles: a deviation within this many σ costs nothing (AlphaFold's
#: violation tolerance, ``violation_tolerance_factor`` 12: only gross distortions; the evaluation's outliers are 4 σ)
PROJECT_ANGLE_SIGMAS = 12.0
#: degrees; the projection's ω tolerance: ω within this of 180° (trans) or 0° (cis) costs nothing
PROJECT_OMEGA_TOLERANCE = 15.0
#: training's peptide term: ω within this many degrees of planar costs nothing (MD: ~6° spread; the
#: evaluation's outliers are 30° off), and each angle across the bond within this many σ
TRAIN_OMEGA_TOLERANCE = 10.0
TRAIN_ANGLE_SIGMAS = 4.0
#: Å; non-bonded atom pairs closer than this in the true frame are the contact term's pairs
CONTACT_REACH_A = 5.0
#: Å; AlphaFold's FAPE clamp: an atom further off than this counts as this far
FAPE_CLAMP_A = 10.0
#: Å²/rad²; the weight of the projection's peptide terms: 10° beyond a tolerance costs 0.3 Å², as much as a
#: 0.55 Å bond-length error (with weight 1 the restraint on the values held a 60° twist at 20°, not 15°)
PROJECT_PEPTIDE_WEIGHT = 10.0
#: Å; the projection searches clash candidates this far beyond the clash reach, and searches again only once an
#: atom has moved half of it (no pair can come within reach unseen in between)
PROJECT_SKIN_A = 1.0
#: Å; the projection stops once no pair clashes at :data:`CLASH_SCALE` (it pushes them to
#: :data:`PROJECT_CLASH_SCALE`), every inter-token bond (a pair shorter than :data:`STOP_BOND_MAX_A`) is within
#: PROJECT_BOND_TOLERANCE_A of its length (the evaluation's bond tolerance) and every 1-3 pair across tokens within
#: PROJECT_ANGLE_TOLERANCE_A (a little beyond the demo MD's own extremes from its first frame, 0.26 Å), and every
#: peptide bond is within its tolerances widened by PROJECT_STOP_MARGIN_DEG degrees: the quadratic terms approach
#: their targets only slowly, and never all at once
PROJECT_BOND_TOLERANCE_A = 0.1
PROJECT_ANGLE_TOLERANCE_A = 0.3
STOP_BOND_MAX_A = 1.9
PROJECT_STOP_MARGIN_DEG = 5.0


def fold_pairs(frames: np.ndarray, ca: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cα pairs that hold the fold, and how much their distance varies in the training MD.

    Args:
        frames: (F, A, 3) Å, training frames (the first defines the pairs); ca: (R,) Cα atom indices.
    Returns:
        (2, Q) atom index pairs closer than :data:`FOLD_CUTOFF` in the first frame and not sequence
        neighbours, and (Q,) the standard deviation of their distance over the frames (Å, at least
        :data:`FOLD_MIN_SPREAD`).
    """
    from scipy.spatial import cKDTree

    pairs = cKDTree(frames[0, ca]).query_pairs(FOLD_CUTOFF, output_type="ndarray")
    pairs = pairs[np.abs(pairs[:, 0] - pairs[:, 1]) > 1]
    index = ca[pairs].T.astype(np.int64)
    d = np.linalg.norm(frames[:, index[0]] - frames[:, index[1]], axis=-1)
    return index, np.maximum(d.std(0), FOLD_MIN_SPREAD).astype(np.float32)


def vdw_radii(symbols: list[str]) -> np.ndarray:
    """(A,) van der Waals radii (Å, RDKit) of element symbols; 0 for metals, which clash checks leave out."""
    from rdkit import Chem


    table = Chem.GetPeriodicTable()
    return np.array([0.0 if s in METALS else table.GetRvdw(s) for s in symbols], np.float32)


def near_pairs(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """(E, 2) bonds -> (P, 2) sorted pairs (i < j) of atoms that are bonded (1-2) or share a bonded neighbour (1-3)."""
    import scipy.sparse as sparse

    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    adj = sparse.coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms)).tocsr()
    adj = adj + adj.T
    near = sparse.triu(adj + adj @ adj, k=1).tocoo()
    order = np.lexsort((near.col, near.row))
    return np.stack([near.row[order], near.col[order]], 1).astype(np.int64)


def bond_deviation(x: torch.Tensor, internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, A, 3) -> (B, T, P) squared deviation (Å²) of each inter-token 1-2/1-3 distance from its length."""
    i, j = internal["pair_index"]
    d = (x[..., i, :] - x[..., j, :]).norm(dim=-1)
    return (d - internal["pair_length"].to(d.dtype)) ** 2


def clash_penalty(x: torch.Tensor, internal: dict[str, torch.Tensor], scale: float = CLASH_SCALE,
                  max_neighbors: int = 64) -> torch.Tensor:
    """(B, T, A, 3) -> (B, T) soft clash penalty (Å²) of each frame: pairs closer than ``scale`` × (r_i + r_j).

    Candidate pairs come from a radius search (``torch_cluster``) on the detached coordinates,
    so the cost is linear in atoms.
    """
    b, t, a, _ = x.shape
    pairs = nonbonded_candidates(x.reshape(b * t, a, 3), internal, clash_reach(internal, scale),
                                 max_neighbors=max_neighbors)
    return x.new_zeros(b * t).index_add_(0, pairs[0] // a, pair_clashes(x, internal, pairs, scale)).view(b, t)


def clash_reach(internal: dict[str, torch.Tensor], scale: float) -> float:
    """Å: the farthest two atoms can be and still clash at ``scale`` (the largest radius, twice)."""
    return scale * 2 * float(internal["radius"].max())


def pair_clashes(x: torch.Tensor, internal: dict[str, torch.Tensor], pairs: tuple[torch.Tensor, torch.Tensor],
                 scale: float) -> torch.Tensor:
    """(B, T, A, 3) and flat candidate pairs (:func:`nonbonded_candidates` of its frames) -> (K,) each pair's
    ``max(0, scale · (r_i + r_j) - d)²`` (Å²)."""
    a = x.shape[-2]
    src, dst = pairs
    flat = x.reshape(-1, 3)
    radius = internal["radius"].to(x.dtype)
    d = (flat[src] - flat[dst]).norm(dim=-1)
    return torch.relu(scale * (radius[src % a] + radius[dst % a]) - d) ** 2


def nonbonded_candidates(x: torch.Tensor, internal: dict[str, torch.Tensor], reach: float,
                         known: torch.Tensor | None = None, max_neighbors: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom pairs of each frame within ``reach`` Å that may clash: neither bonded nor sharing a bonded neighbour
    (``internal["excluded"]``), both with a radius, both ``known``.

    A radius search (``torch_cluster``) on the detached coordinates over the known atoms only, so the cost is
    linear in atoms. Args: x (F, A, 3); known (F, A) bool or None (all). Returns flat indices ``f * A + i``
    (src < dst within a frame).
    """
    from torch_cluster import radius_graph

    f, a, _ = x.shape
    radius = internal["radius"]
    atoms = torch.arange(f * a, device=x.device)
    keep = radius.gt(0).repeat(f) if known is None else radius.gt(0).repeat(f) & known.reshape(-1)
    atoms = atoms[keep]
    src, dst = radius_graph(x.reshape(-1, 3)[atoms].detach(), reach, batch=atoms // a, max_num_neighbors=max_neighbors)
    src, dst = atoms[src], atoms[dst]
    keep = src < dst
    src, dst = src[keep], dst[keep]
    keep = ~torch.isin((src % a) * a + dst % a, internal["excluded"])
    return src[keep], dst[keep]


def fold_penalty(x: torch.Tensor, reference: torch.Tensor, internal: dict[str, torch.Tensor],
                 sigmas: float) -> torch.Tensor:
    """(B, T, A, 3), reference (..., A, 3) -> (B, T): the sum of :func:`fold_terms` over the fold pairs (Å²)."""
    return fold_terms(x, reference, internal, sigmas).sum(-1)


def fold_terms(x: torch.Tensor, reference: torch.Tensor, internal: dict[str, torch.Tensor],
               sigmas: float) -> torch.Tensor:
    """(B, T, A, 3), reference (..., A, 3) -> (B, T, Q): per fold pair ``max(0, |d - d_ref| - sigmas · spread)²``
    (Å²): zero while its Cα-Cα distance stays within ``sigmas`` of the training MD's spread of its reference
    value."""
    i, j = internal["fold_index"]
    d = (x[..., i, :] - x[..., j, :]).norm(dim=-1)
    d_ref = (reference[..., i, :] - reference[..., j, :]).norm(dim=-1).to(d.dtype)
    if d_ref.ndim == 2:  # one reference per sample: (B, Q) -> (B, 1, Q)
        d_ref = d_ref[:, None]
    return torch.relu((d - d_ref).abs() - sigmas * internal["fold_spread"].to(d.dtype)) ** 2


def peptide_quads(omega: torch.Tensor, pair_index: torch.Tensor, pair_length: torch.Tensor) -> torch.Tensor:
    """The peptide bonds of a model's system.

    Args:
        omega: (R, 4) ω atom quads CA(i-1), C(i-1), N(i), CA(i) per residue, -1 where undefined (the
            token layout's ``torsion_atoms[:, 2]``); pair_index (2, P), sorted, and pair_length (P,) Å: the
            inter-token 1-2/1-3 pairs and their first-frame lengths (:class:`~hemeplm.data.internal.InternalLayout`).
    Returns:
        (Q, 4) int64 quads of the bonds C-N listed there no longer than :data:`PEPTIDE_BOND_MAX_A`.
    """
    quads = omega[(omega >= 0).all(-1)].long()
    if not len(quads) or not pair_index.shape[-1]:
        return quads[:0]
    n = int(max(int(pair_index.max()), int(quads.max()))) + 1
    keys = pair_index[0].long() * n + pair_index[1].long()
    c, nn = quads[:, 1], quads[:, 2]
    want = torch.minimum(c, nn) * n + torch.maximum(c, nn)
    at = torch.searchsorted(keys, want).clamp(max=len(keys) - 1)
    listed = keys[at] == want
    short = pair_length.to(torch.float64)[at] <= PEPTIDE_BOND_MAX_A
    return quads[listed & short]


def peptide_geometry(x: torch.Tensor, quads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., A, 3), (Q, 4) peptide quads -> (..., Q) each, radians: ω's distance from planar (from 0 or ±π,
    whichever is nearer: in [0, π/2]), the angle CA(i)-C(i)-N(i+1) and the angle C(i)-N(i+1)-CA(i+1)."""
    p = [x[..., quads[:, k], :] for k in range(4)]
    omega = dihedral_angle(*p).abs()
    return torch.minimum(omega, math.pi - omega), bond_angle(p[0], p[1], p[2]), bond_angle(p[1], p[2], p[3])


def peptide_penalty(x: torch.Tensor, quads: torch.Tensor, omega_tolerance: float = PROJECT_OMEGA_TOLERANCE,
                    angle_sigmas: float = PROJECT_ANGLE_SIGMAS) -> torch.Tensor:
    """(..., A, 3) -> (...): the sum of :func:`peptide_terms` over the bonds (rad²)."""
    return peptide_terms(x, quads, omega_tolerance, angle_sigmas).sum(-1)


def peptide_terms(x: torch.Tensor, quads: torch.Tensor, omega_tolerance: float = PROJECT_OMEGA_TOLERANCE,
                  angle_sigmas: float = PROJECT_ANGLE_SIGMAS) -> torch.Tensor:
    """(..., A, 3), (Q, 4) quads -> (..., Q): each peptide bond's flat-bottomed terms (rad²).

    ``max(0, δω - tol)²`` with δω the distance of ω from planar (:func:`peptide_geometry`) and tol
    ``omega_tolerance`` degrees, plus for each angle of :data:`PEPTIDE_ANGLES`
    ``max(0, |θ - θ0| - angle_sigmas · σ)²``: zero while the bond is planar and its angles are
    within tolerance, as in AlphaFold's between-residue violation terms.
    """
    if not len(quads):
        return x.new_zeros((*x.shape[:-2], 0))
    dev, ca_c_n, c_n_ca = peptide_geometry(x, quads)
    pen = torch.relu(dev - math.radians(omega_tolerance)) ** 2
    for theta, (mean, sigma) in zip((ca_c_n, c_n_ca), PEPTIDE_ANGLES.values()):
        pen = pen + torch.relu((theta - math.radians(mean)).abs() - math.radians(angle_sigmas * sigma)) ** 2
    return pen


def frame_aligned_error(x: torch.Tensor, truth: torch.Tensor, frame_atoms: torch.Tensor,
                        clamp: float = FAPE_CLAMP_A) -> torch.Tensor:
    """AlphaFold's frame-aligned point error: every atom seen from every given residue frame.

    Args:
        x, truth: (B, T, A, 3) Å, predicted and true coordinates.
        frame_atoms: (K, 3) N, CA, C atom indices of the residue frames to look from.
    Returns:
        (B,) mean over frames, residue frames and atoms of ``min(clamp, |F̂⁻¹ x̂ - F⁻¹ x|)`` (Å), with F the
        N-CA-C frame built from the same coordinates: invariant to a rigid motion of either structure.
    """
    def local(c: torch.Tensor) -> torch.Tensor:
        rot = residue_frames(c, frame_atoms)  # (B, T, K, 3, 3)
        rel = c[..., None, :, :] - c[..., frame_atoms[:, 1], :][..., None, :]  # (B, T, K, A, 3)
        return torch.einsum("...kji,...kaj->...kai", rot, rel)

    err = ((local(x) - local(truth)).pow(2).sum(-1) + 1e-8).sqrt().clamp(max=clamp)
    return err.mean(dim=(-1, -2, -3))


def contact_error(x: torch.Tensor, truth: torch.Tensor, internal: dict[str, torch.Tensor],
                  ligand: torch.Tensor | None = None, reach: float = CONTACT_REACH_A,
                  max_neighbors: int = 64) -> dict[str, torch.Tensor]:
    """(B, T, A, 3) predicted and true Å -> ``contact`` (B,): mean over frames of the mean squared error (Å²) of
    the distances of the non-bonded pairs (:func:`nonbonded_candidates`) within ``reach`` of each other in the
    true frame: invariant to a rigid motion of either structure, zero only where the local packing is the
    truth's. With ``ligand`` (A,) bool also ``ligand_contact`` (B,): the same mean over the pairs with a ligand
    atom alone (0 in a frame with none), so that the ligand's few contacts weigh as much as the protein's many."""
    b, t, a, _ = x.shape
    src, dst = nonbonded_candidates(truth.reshape(b * t, a, 3), internal, reach, max_neighbors=max_neighbors)
    flat, true = x.reshape(-1, 3), truth.reshape(-1, 3).to(x.dtype)
    err = ((flat[src] - flat[dst]).norm(dim=-1) - (true[src] - true[dst]).norm(dim=-1)) ** 2
    frame = src // a

    def frame_mean(where: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(b * t).index_add_(0, where, e)
        count = x.new_zeros(b * t).index_add_(0, where, torch.ones_like(e))
        return (total / count.clamp(min=1)).view(b, t).mean(-1)

    out = {"contact": frame_mean(frame, err)}
    if ligand is not None:
        keep = ligand[src % a] | ligand[dst % a]
        out["ligand_contact"] = frame_mean(frame[keep], err[keep])
    return out


def structure_terms(x: torch.Tensor, internal: dict[str, torch.Tensor], peptide: torch.Tensor | None = None,
                    truth: torch.Tensor | None = None, frame_atoms: torch.Tensor | None = None,
                    contact: bool = False, ligand: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(B, T, A, 3) -> ``bond`` and ``clash`` (Å²), each (B,), means over frames (and pairs; see module docstring);
    with ``peptide`` quads also ``peptide`` (rad², mean over frames and bonds of :func:`peptide_penalty` at
    :data:`TRAIN_OMEGA_TOLERANCE` and :data:`TRAIN_ANGLE_SIGMAS`), with the ``truth`` (B, T, A, 3) and
    residue ``frame_atoms`` (K, 3) also ``fape`` (Å, :func:`frame_aligned_error`), and with the ``truth`` and
    ``contact`` also ``contact`` (Å², :func:`contact_error`), and with the ``ligand`` (A,) bool mask too
    ``ligand_contact`` (Å², the ligand's pairs alone)."""
    bond = bond_deviation(x, internal)
    out = {"bond": bond.mean(dim=(-1, -2)) if bond.shape[-1] else x.new_zeros(x.shape[0]),
           "clash": clash_penalty(x, internal).mean(-1)}
    if peptide is not None:
        pen = peptide_penalty(x, peptide, TRAIN_OMEGA_TOLERANCE, TRAIN_ANGLE_SIGMAS)  # (B, T), summed over bonds
        out["peptide"] = pen.mean(-1) / max(1, len(peptide))
    if truth is not None and frame_atoms is not None and len(frame_atoms):
        out["fape"] = frame_aligned_error(x, truth, frame_atoms)
    if truth is not None and contact:
        out.update(contact_error(x, truth, internal, ligand))
    return out


def project(coordinates: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor, free: torch.Tensor,
            internal: dict[str, torch.Tensor], steps: int = 50, lr: float = 0.1,
            restraint: float = 0.01, fold: torch.Tensor | None = None, fold_sigmas: float = 0.0,
            peptide: torch.Tensor | None = None, atom_token: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Move generated internal values the least that removes inter-token bond errors, clashes and
    peptide-bond distortions.

    Minimises, over the values of the ``free`` tokens, the sum over frames of the squared
    inter-token 1-2/1-3 deviations and clash penalties (Å²), the :func:`peptide_penalty` of the
    ``peptide`` bonds (rad², times :data:`PROJECT_PEPTIDE_WEIGHT`: ω planar, the two angles across the bond) plus
    ``restraint`` times the squared change of the (normalised) values, with Adam. The values stay
    internal coordinates, so what is exact inside a token stays exact; given tokens do not move.
    With a ``fold`` reference and ``fold_sigmas`` > 0, the :func:`fold_penalty` is added too
    (the sampler passes each window's key frame: ``sample.py --fold-hold``).

    Only frames holding a free token are decoded. The clash candidates are searched once, :data:`PROJECT_SKIN_A`
    beyond the clash reach, and again only once an atom has moved half that far. With ``atom_token`` pairs of two
    given atoms, which cannot move, are left out, and the minimisation stops as soon as nothing it can change
    breaks a rule an MD frame keeps (:func:`_violated`: no clash, every inter-token bond and 1-3 distance near its
    length, every peptide bond and fold pair near its tolerance).

    Args:
        coordinates: normalised values (B, T', N, D) -> coordinates (B, T', A, 3), for any T' frames of the window.
        values: (B, T, N, D) generated values; free: (B, T, N) bool, tokens that may move.
        fold: None, or (A, 3) / (B, A, 3) reference coordinates of the fold; fold_sigmas: its tolerance.
        peptide: None, or (Q, 4) peptide quads (:func:`peptide_quads`).
        atom_token: None (no stopping rule: all ``steps``), or (A,) the token of each atom.
    Returns:
        (B, T, N, D) projected values, and the number of Adam steps taken.
    """
    rows = free.any(-1).any(0)  # (T,) frames with a free token
    if steps <= 0 or not bool(rows.any()):
        return values, 0
    sub, sub_free = values[:, rows], free[:, rows]
    b, t = sub_free.shape[:2]
    move = sub_free[..., None].to(values.dtype)
    moving = None if atom_token is None else sub_free[..., atom_token]  # (B, T', A) atoms that can move
    delta = torch.zeros_like(sub, requires_grad=True)
    # eps well above float noise: a value whose gradient is noise (or whose term is already met) stays put,
    # instead of taking Adam's full normalised step (which would also break the rotation equivariance)
    opt = torch.optim.Adam([delta], lr=lr, eps=1e-3)
    reach = clash_reach(internal, PROJECT_CLASH_SCALE) + PROJECT_SKIN_A
    built, pairs, taken = None, None, 0
    with torch.enable_grad():
        for taken in range(steps + 1):
            x = coordinates(sub + delta * move)
            a = x.shape[-2]
            flat = x.detach().reshape(b * t, a, 3)
            if built is None or float((flat - built).norm(dim=-1).amax()) > PROJECT_SKIN_A / 2:
                built = flat.clone()
                pairs = nonbonded_candidates(flat, internal, reach)
                if moving is not None:
                    keep = moving.reshape(-1)[pairs[0]] | moving.reshape(-1)[pairs[1]]
                    pairs = (pairs[0][keep], pairs[1][keep])
            terms = {"bond": bond_deviation(x, internal),
                     "clash": pair_clashes(x, internal, pairs, PROJECT_CLASH_SCALE)}
            if fold is not None and fold_sigmas > 0:
                terms["fold"] = fold_terms(x, fold, internal, fold_sigmas)
            if peptide is not None:
                terms["peptide"] = PROJECT_PEPTIDE_WEIGHT * peptide_terms(x, peptide)
            if moving is not None and not _violated(x, terms["bond"], internal, pairs, moving, peptide, fold,
                                                    fold_sigmas):
                break
            if taken == steps:
                break
            energy = sum(term.sum() for term in terms.values()) + restraint * (delta * move).pow(2).sum()
            opt.zero_grad()
            energy.backward()
            opt.step()
    out = values.clone()
    out[:, rows] = (sub + delta * move).detach()
    return out, taken


def _violated(x: torch.Tensor, bond: torch.Tensor, internal: dict[str, torch.Tensor],
              pairs: tuple[torch.Tensor, torch.Tensor], moving: torch.Tensor, peptide: torch.Tensor | None,
              fold: torch.Tensor | None, fold_sigmas: float) -> bool:
    """Whether frames ``x`` (B, T, A, 3), whose :func:`bond_deviation` is ``bond`` (B, T, P), break a rule of
    :func:`project` where a ``moving`` (B, T, A) atom can mend it, at thresholds an MD frame meets: a clash at
    :data:`CLASH_SCALE` among the candidate ``pairs`` (which hold pairs with a moving atom only), an inter-token
    bond or 1-3 distance beyond :data:`PROJECT_BOND_TOLERANCE_A` or :data:`PROJECT_ANGLE_TOLERANCE_A` from its
    length, a peptide bond outside the projection's tolerances widened by :data:`PROJECT_STOP_MARGIN_DEG`, a fold
    pair outside its tolerance widened by a standard deviation."""
    x = x.detach()
    if bool((pair_clashes(x, internal, pairs, CLASH_SCALE) > 0).any()):
        return True
    bonded = internal["pair_length"] < STOP_BOND_MAX_A
    tolerance = torch.where(bonded, PROJECT_BOND_TOLERANCE_A, PROJECT_ANGLE_TOLERANCE_A).to(x.dtype)
    checks = [(bond.detach() > tolerance ** 2, internal["pair_index"])]
    if peptide is not None:
        checks.append((peptide_terms(x, peptide, PROJECT_OMEGA_TOLERANCE + PROJECT_STOP_MARGIN_DEG,
                                     PROJECT_ANGLE_SIGMAS) > 0, peptide.T))
    if fold is not None and fold_sigmas > 0:
        checks.append((fold_terms(x, fold, internal, fold_sigmas + 1) > 0, internal["fold_index"]))
    return any(bool((broken & moving[..., index].any(-2)).any()) for broken, index in checks)


METALS = {"Fe", "Zn", "Mg", "Ca", "Cu", "Mn", "Co", "Ni", "Na", "K"}
