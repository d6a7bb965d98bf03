"""Internal coordinates: every token is a rigid body plus torsions, valid by construction.

What the model generates for token ``n`` at frame ``t`` is

* a rigid-body transform ``(R_n(t), c_n(t))`` of its atoms' *body coordinates* ``P_n``,
  expressed in the axes of its anchor frame ``(R_a, o_a)`` on the key frame: a rotation
  vector (3 values) and a translation (3 values, Å);
* the sin/cos of up to :data:`N_TORSIONS` torsions (2 values each) whose rotation moves
  part of the token's atoms about one of its bonds.

Decoding places the atoms as ``x = o_a + R_a (R_n(t) τ(P_n) + c_n(t))``, where ``τ`` sets
each torsion of ``P_n`` to its generated angle by rotating the atoms on one side of its
bond about that bond. Rotations about a bond keep every bond length and bond angle, so
whatever the network outputs, every bond and angle inside a token is the one of ``P_n``:

* a **protein residue** (and a residue's overflow atoms) has its own N-CA-C frame as
  anchor (origin Cα) and the key frame's own local coordinates as ``P``; its torsions are
  N-CA-C-O (the carbonyl's turn with psi) and chi1-4 (not in rings: a proline is rigid).
  At the key frame its transform is the identity, so a real MD geometry is carried. At
  another frame the transform is the least-squares (Kabsch) fit of the key's N, CA, C onto
  that frame's: the fit shares the change of the N-CA-C angle out over the three atoms, so
  that the peptide bond C(i)-N(i+1) of an MD frame is rebuilt to 0.02 Å (mean), where
  placing Cα and the N-CA-C frame exactly put all of it on the peptide bond (12% of them
  more than 0.1 Å off on the demo MD; 1% with the fit). An overflow token keeps the frame;
* a **ligand group** has the frame of its anchor residue as anchor and a *template* as
  ``P``: its atoms in the first training frame, in that residue's local axes, centred on its
  core (the atoms no torsion moves). It is placed by fitting the core (Kabsch); its
  torsions are the non-ring bonds inside the group (both ends bonded to another group
  atom; the smaller side moves). A group whose core would have fewer than 3 atoms is rigid.
  Because the template is fixed, an inpainted ligand needs nothing of its key-frame pose.

What this leaves free (the peptide bond between residues, bonds between ligand groups,
clashes between tokens) is what :func:`structure_pairs` lists for the structure loss.

Shapes: N tokens, W slots, K = :data:`N_TORSIONS`, D = 6 + 2K values per token, A atoms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hemeplm.data.tokens import KIND_LIGAND, KIND_RESIDUE, scatter_atom14
from hemeplm.geometry.torsion import dihedral_angle
from hemeplm.geometry.rigid import kabsch, matrix_to_rotvec, residue_frames, rotvec_to_matrix
from hemeplm.geometry.structure import fold_pairs, near_pairs, vdw_radii

log = logging.getLogger(__name__)

#: torsions per token: N-CA-C-O and chi1-4 for a residue; a ligand group's first five
N_TORSIONS = 5
#: values per token: rotation vector, translation, sin/cos per torsion
N_VALUES = 6 + 2 * N_TORSIONS


@dataclass
class InternalLayout:
    """Torsion trees, templates and structure pairs of a system (numpy; see module docstring).

    Attributes:
        torsion_slots: (N, K, 4) slots of each torsion's atoms, -1 where the torsion is absent.
        torsion_moving: (N, K, W) bool, slots the torsion rotates (proximal torsions first).
        template: (N, W, 3) Å, body coordinates of ligand groups (zero for residue tokens).
        core: (N, W) bool, the atoms fitted to place the token: a ligand group's atoms that no torsion
            moves, a residue's N, CA and C; none for an overflow token (its residue's frame places it).
        pair_index: (2, P) atom pairs in different tokens that are bonded (1-2) or share a
            bonded neighbour (1-3): the geometry that rigid tokens do not fix.
        pair_length: (P,) Å, their distance in the first frame.
        excluded: sorted keys ``i * A + j`` (i < j) of all 1-2 and 1-3 pairs (no clash there).
        radius: (A,) van der Waals radii (Å), 0 for metals (left out of clashes).
        fold_index: (2, Q) Cα pairs that hold the fold in a long forecast; fold_spread: (Q,) Å, the
            training MD's standard deviation of their distance (:func:`hemeplm.geometry.structure.fold_pairs`).
    """

    torsion_slots: np.ndarray
    torsion_moving: np.ndarray
    template: np.ndarray
    core: np.ndarray
    pair_index: np.ndarray
    pair_length: np.ndarray
    excluded: np.ndarray
    radius: np.ndarray
    fold_index: np.ndarray
    fold_spread: np.ndarray


def _side(start: int, blocked: int, adj: list[set[int]], allowed: set[int]) -> set[int] | None:
    """Atoms reached from ``start`` without crossing ``blocked`` (inside ``allowed``); None if ``blocked``
    is reached (the bond is in a ring)."""
    seen, todo = {start}, [start]
    while todo:
        i = todo.pop()
        for j in adj[i]:
            if j == blocked:
                if i != start:
                    return None
                continue
            if j not in seen and j in allowed:
                seen.add(j)
                todo.append(j)
    return seen


def build_internal(layout: dict, bonds: np.ndarray, residue: np.ndarray, coords: np.ndarray,
                   symbols: list[str]) -> InternalLayout:
    """Internal-coordinate description of a system.

    Args:
        layout: :class:`~hemeplm.data.tokens.TokenLayout` as a dict of arrays.
        bonds: (2, E) atom bonds; residue: (A,) topology residue of each atom.
        coords: (F, A, 3) Å, training frames; the first gives the ligand templates and pair lengths.
        symbols: (A,) element symbols.
    """

    first = coords[0]
    idx, kind, torsion_atoms = layout["atom_index"], layout["kind"], layout["torsion_atoms"]
    n_tok, width = idx.shape
    n_atoms = len(residue)
    adj: list[set[int]] = [set() for _ in range(n_atoms)]
    for i, j in bonds.T:
        adj[int(i)].add(int(j))
        adj[int(j)].add(int(i))
    members: dict[int, set[int]] = {}
    for a in range(n_atoms):
        members.setdefault(int(residue[a]), set()).add(a)
    slots = np.full((n_tok, N_TORSIONS, 4), -1, np.int64)
    moving = np.zeros((n_tok, N_TORSIONS, width), bool)
    template = np.zeros((n_tok, width, 3), np.float32)
    core = np.zeros((n_tok, width), bool)
    frames = residue_frames(torch.as_tensor(first, dtype=torch.float64),
                            torch.as_tensor(layout["frame_atoms"])).numpy()
    for n in range(n_tok):
        atoms = [int(a) for a in idx[n] if a >= 0]
        slot_of = {a: s for s, a in enumerate(idx[n]) if a >= 0}
        inside = set(atoms)
        res = int(layout["residue"][n])
        if kind[n] == KIND_LIGAND:
            quads = _ligand_quads(atoms, adj)
        elif kind[n] == KIND_RESIDUE:
            carbonyl = [tuple(int(a) for a in idx[n, :4])] if (idx[n, :4] >= 0).all() else []
            quads = carbonyl + [tuple(int(a) for a in q) for q in torsion_atoms[res, 3:] if (q >= 0).all()]
        else:
            quads = []
        found = []
        for q in quads:
            if not all(a in inside for a in q):
                continue
            a, b, c, d = q
            side = _side(c, b, adj, members[int(residue[c])])
            if side is None:
                continue
            if kind[n] == KIND_LIGAND:  # a ligand turns its smaller side
                other = _side(b, c, adj, members[int(residue[b])])
                if len(other & inside) < len(side & inside):
                    a, b, c, d, side = d, c, b, a, other
            moved = (side & inside) - {c}
            if moved:
                found.append(((a, b, c, d), moved))
        found.sort(key=lambda f: -len(f[1]))
        if len(found) > N_TORSIONS:
            log.info("token %d keeps %d of its %d torsions; the others stay as in its template", n, N_TORSIONS,
                     len(found))
            found = found[:N_TORSIONS]
        if kind[n] == KIND_LIGAND:
            still = [a for a in atoms if not any(a in m for _, m in found)]
            if len(still) < 3 and found:
                log.info("ligand token %d: fewer than 3 atoms would stay rigid; treated as one rigid body", n)
                found, still = [], atoms
            rot, ca = frames[res], first[layout["frame_atoms"][res, 1]]
            local = (first[atoms] - ca) @ rot
            centre = local[[atoms.index(a) for a in still]].mean(0)
            template[n, [slot_of[a] for a in atoms]] = local - centre
            core[n, [slot_of[a] for a in still]] = True
        for k, (q, moved) in enumerate(found):
            slots[n, k] = [slot_of[a] for a in q]
            moving[n, k, [slot_of[a] for a in moved]] = True
        if kind[n] == KIND_RESIDUE:
            core[n, [slot_of[int(a)] for a in layout["frame_atoms"][res]]] = True
    near = near_pairs(bonds.T, n_atoms)
    token = layout["atom_token"]
    pair_index = near[token[near[:, 0]] != token[near[:, 1]]].T.copy()
    radius = vdw_radii(symbols)
    length = np.linalg.norm(first[pair_index[0]] - first[pair_index[1]], axis=-1).astype(np.float32)
    fold_index, fold_spread = fold_pairs(coords, np.asarray(layout["frame_atoms"])[:, 1])
    return InternalLayout(torsion_slots=slots, torsion_moving=moving, template=template, core=core,
                          pair_index=pair_index, pair_length=length,
                          excluded=near[:, 0] * n_atoms + near[:, 1], radius=radius, fold_index=fold_index,
                          fold_spread=fold_spread)


def _ligand_quads(atoms: list[int], adj: list[set[int]]) -> list[tuple[int, int, int, int]]:
    """Torsion quads (a, b, c, d) of the bonds b-c inside a ligand group whose two ends each have another
    bonded group atom (a, d: the lowest-indexed such neighbours)."""
    inside = set(atoms)
    out = []
    for b in atoms:
        for c in sorted(adj[b] & inside):
            if c <= b:
                continue
            left, right = sorted(adj[b] & inside - {c}), sorted(adj[c] & inside - {b})
            if left and right:
                out.append((left[0], b, c, right[0]))
    return out




# ----------------------------------------------------------------------------- encode / decode (torch)

def anchors(key: torch.Tensor, layout: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor frame of every token on the key frame: (..., N, 3, 3) axes and (..., N, 3) origin (its Cα)."""
    rot = residue_frames(key, layout["frame_atoms"])[..., layout["residue"], :, :]
    return rot, key[..., layout["frame_atoms"][layout["residue"], 1], :]


def body_coordinates(key: torch.Tensor, layout: dict[str, torch.Tensor],
                     internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """(..., A, 3) key frame -> (..., N, W, 3) body coordinates ``P``: the key frame's own local
    coordinates for residue tokens, the template for ligand groups; zero in empty slots."""
    rot, origin = anchors(key, layout)
    own = key[..., layout["atom_index"].clamp(min=0), :] - origin[..., None, :]
    local = torch.einsum("...nji,...nwj->...nwi", rot, own)
    is_lig = (layout["kind"] == KIND_LIGAND)[:, None, None]
    local = torch.where(is_lig, internal["template"].to(local.dtype), local)
    return local * layout["atom_index"].ge(0)[..., None].to(local.dtype)


def torsion_angles(points: torch.Tensor, internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """(..., N, W, 3) slot coordinates -> (..., N, K) torsion angles (0 where absent)."""
    q = internal["torsion_slots"].clamp(min=0)  # (N, K, 4)
    n = torch.arange(q.shape[0], device=q.device)[:, None]
    p = [points[..., n, q[..., i], :] for i in range(4)]
    ang = dihedral_angle(*p)
    return ang * (internal["torsion_slots"][..., 0] >= 0).to(ang.dtype)


def set_torsions(points: torch.Tensor, target: torch.Tensor, internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rotate each torsion of (..., N, W, 3) body coordinates to ``target`` (..., N, K) radians.

    Torsions are applied proximal first; each measures its current angle and rotates its moving
    slots about its bond by the difference, so the result has exactly the target angles and the
    same bond lengths and angles. Absent torsions do nothing.
    """
    slots, moving = internal["torsion_slots"], internal["torsion_moving"]
    n = torch.arange(slots.shape[0], device=slots.device)
    for k in range(slots.shape[1]):
        q = slots[:, k].clamp(min=0)
        present = (slots[:, k, 0] >= 0).to(points.dtype)
        p = [points[..., n, q[:, i], :] for i in range(4)]
        delta = (target[..., k] - dihedral_angle(*p)) * present  # (..., N)
        axis = F.normalize(p[2] - p[1], dim=-1)
        rot = rotvec_to_matrix(-axis * delta[..., None])  # (..., N, 3, 3); the dihedral turns against the axis
        rel = points - p[1][..., None, :]
        turned = torch.einsum("...nij,...nwj->...nwi", rot, rel) + p[1][..., None, :]
        points = torch.where(moving[:, k, :, None], turned, points)
    return points


def encode(x: torch.Tensor, key: torch.Tensor, layout: dict[str, torch.Tensor],
           internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """Coordinates -> internal values.

    Args:
        x: (..., T, A, 3) frames; key: (..., A, 3) key frame (anchors and body coordinates).
    Returns:
        (..., T, N, D): rotation vector, translation (Å), then sin/cos per torsion (0 where absent).
    """
    rot_a, origin = anchors(key, layout)
    ys = x[..., layout["atom_index"].clamp(min=0), :] - origin[..., None, :, None, :]
    ys = torch.einsum("...nji,...tnwj->...tnwi", rot_a, ys)  # atoms in anchor axes, (..., T, N, W, 3)
    # residue tokens: their N-CA-C frame at t relative to the key's
    own_rot = residue_frames(x, layout["frame_atoms"])[..., layout["residue"], :, :]
    rel = rot_a.transpose(-1, -2).unsqueeze(-4) @ own_rot
    ca = x[..., layout["frame_atoms"][layout["residue"], 1], :] - origin.unsqueeze(-3)
    shift = torch.einsum("...nji,...tnj->...tni", rot_a, ca)
    fit = internal["core"].any(-1)
    if bool(fit.any()):
        p = body_coordinates(key, layout, internal)[..., fit, :, :]
        w = internal["core"][fit] & (layout["atom_index"][fit] >= 0)
        r_f, c_f = kabsch(p.unsqueeze(-4).expand(*ys[..., fit, :, :].shape), ys[..., fit, :, :], w)
        rel, shift = rel.clone(), shift.clone()
        rel[..., fit, :, :], shift[..., fit, :] = r_f.to(rel.dtype), c_f.to(shift.dtype)
    ang = torsion_angles(ys, internal)
    present = (internal["torsion_slots"][..., 0] >= 0).to(ang.dtype)
    tors = torch.stack([ang.sin(), ang.cos()], -1) * present[..., None]
    return torch.cat([matrix_to_rotvec(rel), shift, tors.flatten(-2)], -1)


def posed_body(body: torch.Tensor, values: torch.Tensor, internal: dict[str, torch.Tensor]) -> torch.Tensor:
    """Body coordinates (..., N, W, 3) with the torsions of values (..., T, N, D) set -> (..., T, N, W, 3)."""
    body = body.unsqueeze(-4)
    sc = values[..., 6:].unflatten(-1, (N_TORSIONS, 2))
    return set_torsions(body.expand(*values.shape[:-1], *body.shape[-2:]), torch.atan2(sc[..., 0], sc[..., 1]),
                        internal)


def decode(values: torch.Tensor, key: torch.Tensor, layout: dict[str, torch.Tensor],
           internal: dict[str, torch.Tensor], n_atoms: int) -> torch.Tensor:
    """Internal values (..., T, N, D) and key frame (..., A, 3) -> coordinates (..., T, A, 3)."""
    rot_a, origin = anchors(key, layout)
    body = posed_body(body_coordinates(key, layout, internal), values, internal)
    placed = torch.einsum("...nij,...nwj->...nwi", rotvec_to_matrix(values[..., :3]), body) + values[..., None, 3:6]
    xs = torch.einsum("...nij,...tnwj->...tnwi", rot_a, placed) + origin[..., None, :, None, :]
    return scatter_atom14(xs, layout, n_atoms)
