"""Junction refinement: the denoiser's last layers, which see the geometry of their own clean estimate.

The video transformer reads each token's values (a rigid-body transform and torsions) but never the
atoms they place, so it must hold the bonds *between* tokens (the peptide C-N, the angles across it,
ω, bonds between ligand groups) to 0.1 Å, and keep tokens from overlapping, by predicting every
token's transform without seeing its neighbours' errors; it does not (two thirds of the peptide bonds
of its raw samples were more than 0.1 Å off). As AlphaFold's structure module updates its frames from
features of the current frames, :class:`JunctionRefiner` places the atoms of its estimate of the
clean frames and measures, per token,

* the pulls of its inter-token 1-2 and 1-3 pairs toward their reference lengths, summed into a force
  and a torque on the token's rigid body (in its anchor axes),
* the pushes of atom pairs of different tokens closer than 0.8 × the sum of their van der Waals radii (the
  projection's clash distance), as a second force and torque (candidate pairs: :func:`contacts`, from the key
  frame),
* sin ω of the peptide bonds before and after it, and sin ω along each C-N axis (the axis about which
  turning the two residues changes ω; + for residue i+1, − for residue i: a direction the learnt layers
  turn into the correction, not itself a restoring turn),

and turns them with the token's hidden state into an update of its transform, a few times in turn
(weights shared). The features are measured in their natural units (a tenth of an Å for a stretch or a
push) and saturate; the output layer reads the MLP's state *and* these features themselves, so a learnt
linear response to the pulls (a step along them, as a gradient step would take) is one layer away rather
than buried under the hidden state. The update is learnt (its output layer starts at zero, so an untrained
refiner changes nothing) and trained only by the diffusion and structure losses; no rule moves an atom
toward a target.

Shapes: B windows, T frames, N tokens, W slots, D values per token, A atoms, P pairs, C contacts,
Q peptide bonds.
"""

from __future__ import annotations

import torch
from torch import nn

from hemeplm.data import internal as ic
from hemeplm.geometry.rigid import matrix_to_rotvec, rotvec_to_matrix
from hemeplm.geometry.structure import PROJECT_CLASH_SCALE as CONTACT_SCALE
from hemeplm.geometry.structure import nonbonded_candidates
from hemeplm.geometry.torsion import dihedral_angle

#: per-token features: bond force (3) and torque (3), contact force (3) and torque (3), sin ω before and after (2),
#: sin ω along the C-N axes (3)
N_FEATURES = 17
#: the features' natural units: Å for forces (a 0.1 Å stretch or push is one unit), Å² for torques (that force on a
#: 3 Å arm), sin ω (about 10°); features are divided by these, then saturate at FEATURE_LIMIT units
FEATURE_UNITS = (0.1,) * 3 + (0.3,) * 3 + (0.1,) * 3 + (0.3,) * 3 + (0.2,) * 5
FEATURE_LIMIT = 10.0
#: rad and Å per unit of the output layer: the refiner makes corrections of tenths of an Å, and a smaller scale
#: keeps each optimiser step on its weights (about the learning rate per weight) from moving tokens by more
STEP_SCALE = 0.1
#: Å; key-frame pairs within CONTACT_SCALE (r_i + r_j) plus this are the window's candidate contacts
CONTACT_MARGIN = 1.0


def contacts(key: torch.Tensor, known: torch.Tensor | None, atom_token: torch.Tensor, internal: dict) -> torch.Tensor:
    """Candidate contacts of a window: atom pairs of different tokens, neither bonded nor sharing a bonded
    neighbour, both with a radius and a known key position, within ``CONTACT_SCALE (r_i + r_j) + CONTACT_MARGIN``
    Å in the key frame.

    Args:
        key: (B, A, 3) Å; known: (B, A) bool or None (all); atom_token: (A,); internal: ``radius`` (A,) Å and ``excluded``.
    Returns:
        (3, C) long: window, atom i, atom j (i < j).
    """
    b, a, _ = key.shape
    radius = internal["radius"]
    src, dst = nonbonded_candidates(key, internal, CONTACT_SCALE * 2 * float(radius.max()) + CONTACT_MARGIN, known)
    w, i, j = src // a, src % a, dst % a
    d = (key[w, i] - key[w, j]).norm(dim=-1)
    keep = (atom_token[i] != atom_token[j]) & (d < CONTACT_SCALE * (radius[i] + radius[j]) + CONTACT_MARGIN)
    return torch.stack([w[keep], i[keep], j[keep]])


class JunctionRefiner(nn.Module):
    """Update each token's rigid transform from its hidden state and the geometry it makes with its neighbours.

    Args:
        dim: width of the denoiser's hidden states; steps: refinement rounds (weights shared).
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.features = nn.Linear(N_FEATURES, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())
        self.out = nn.Linear(dim + N_FEATURES, 6)
        self.register_buffer("units", torch.tensor(FEATURE_UNITS), persistent=False)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def geometry(self, rot: torch.Tensor, shift: torch.Tensor, body: torch.Tensor, cond, links: dict,
                 radius: torch.Tensor) -> torch.Tensor:
        """(B, T, N, :data:`N_FEATURES`) per-token features of the estimate's geometry between tokens, in Å, Å² and
        sin ω.

        Args:
            rot, shift: (B, T, N, 3, 3) rotations and (B, T, N, 3) Å translations of the tokens in their anchor axes.
            body: (B, T, N, W, 3) body coordinates with the estimate's torsions set.
            links: :meth:`~hemeplm.models.surrogate.HemePLM.links` of ``cond``'s tokens; radius: (N, W) Å.

        Forces and torques (about each token's origin) are summed in the key frame's axes and turned into the
        token's anchor axes at the end (a cross product turns with its factors).
        """
        b, t, n, w = body.shape[:4]
        frames = cond.frames.expand(b, -1, -1, -1)  # a conditioning of one key may serve several windows
        turn = frames[:, None] @ rot  # (B, T, N, 3, 3): body -> key-frame axes
        origin = torch.einsum("bnij,btnj->btni", frames, shift) + cond.origins[:, None]
        x = (turn[..., None, :, :] * body[..., None, :]).sum(-1) + origin[..., None, :]  # (B, T, N, W, 3)
        rows = x.permute(0, 2, 3, 1, 4).reshape(b * n * w, t, 3)  # one row per atom slot, its T frames
        centre = origin.permute(0, 2, 1, 3).reshape(b * n, t, 3)
        windows = torch.arange(b, device=x.device)

        def atoms(window: torch.Tensor, tok: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
            return rows.index_select(0, (window * n + tok) * w + slot)  # (M, T, 3)

        def moments(window: torch.Tensor, tok: torch.Tensor, slot: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
            """(B·N, T, 6) the force on atoms (M, T, 3) summed per token, with its torque about the token's origin."""
            arm = atoms(window, tok, slot) - centre.index_select(0, window * n + tok)
            both = torch.cat([force, torch.linalg.cross(arm, force)], -1)
            return both.new_zeros(b * n, t, 6).index_add_(0, window * n + tok, both)

        def pairwise(window, tok, slot, along):
            """``along(d (M, T, 3), length (M, T, 1)) -> (M, T, 3)`` the force on the first atom of each pair
            (the second feels its opposite) -> (B·N, T, 6)."""
            d = atoms(window, tok[1], slot[1]) - atoms(window, tok[0], slot[0])
            force = along(d, d.norm(dim=-1, keepdim=True).clamp(min=1e-6))
            return moments(window, tok[0], slot[0], force) + moments(window, tok[1], slot[1], -force)

        feats = []
        tok, slot = links["pair_token"], links["pair_slot"]
        window = windows.repeat_interleave(tok.shape[1])
        ref = links["pair_length"].repeat(b)[:, None, None]
        feats.append(pairwise(window, tok.repeat(1, b), slot.repeat(1, b),
                              lambda d, length: (length - ref) * d / length))  # stretched pairs pull together
        ct, cs = links["contact_token"], links["contact_slot"]
        limit = CONTACT_SCALE * (radius[ct[0], cs[0]] + radius[ct[1], cs[1]])[:, None, None]
        feats.append(pairwise(links["contact_window"], ct, cs,
                              lambda d, length: -torch.relu(limit - length) * d / length))  # close pairs push apart
        # forces and torques into each token's anchor axes
        feats = [torch.einsum("bnji,bntkj->btnki", frames, f.view(b, n, t, 2, 3)).flatten(-2) for f in feats]
        qt, qs = links["quad_token"], links["quad_slot"]
        window = windows.repeat_interleave(qt.shape[1])
        quad = [atoms(window, qt[i].repeat(b), qs[i].repeat(b)) for i in range(4)]
        sin_omega = dihedral_angle(*quad).sin()
        axis = quad[2] - quad[1]
        twist = sin_omega[..., None] * axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # (Q·B, T, 3) C -> N
        zero = torch.zeros_like(sin_omega)
        after, before = window * n + qt[1].repeat(b), window * n + qt[2].repeat(b)  # residue i and residue i+1
        omegas = x.new_zeros(b * n, t, 5)
        omegas = omegas.index_add(0, before, torch.cat([torch.stack([sin_omega, zero], -1), twist], -1))
        omegas = omegas.index_add(0, after, torch.cat([torch.stack([zero, sin_omega], -1), -twist], -1))
        omegas = omegas.view(b, n, t, 5).transpose(1, 2)
        turned = torch.einsum("bnji,btnj->btni", frames, omegas[..., 2:])
        return torch.cat(feats + [omegas[..., :2], turned], -1)

    def forward(self, x0: torch.Tensor, hidden: torch.Tensor, cond, mask: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor, internal: dict, links: dict, radius: torch.Tensor) -> torch.Tensor:
        """Refine a clean estimate.

        Args:
            x0: (B, T, N, D) normalised values (``value * std + mean`` is the rotation vector, translation in Å, ...).
            hidden: (B, T, N, dim) the denoiser's last hidden states; mask: (B, T, N) True where given (kept).
            mean, std: (N, D) normalisation; internal: the torsion trees of ``cond``'s tokens
                (``torsion_slots``, ``torsion_moving``); links, radius: see :meth:`geometry`.
        Returns:
            (B, T, N, D) the estimate with updated rotation vectors and translations.
        """
        free = (~mask)[..., None].to(x0.dtype)
        values = x0 * std + mean
        body = ic.posed_body(cond.body.expand(x0.shape[0], -1, -1, -1), values, internal)
        start = rotvec_to_matrix(values[..., :3])
        rot, shift = start, values[..., 3:6]
        for _ in range(self.steps):
            feats = self.geometry(rot, shift, body, cond, links, radius) / self.units
            feats = feats / (1 + feats.abs() / FEATURE_LIMIT)
            state = self.mlp(self.norm(hidden + self.features(feats)))
            step = self.out(torch.cat([state, feats], -1)) * (STEP_SCALE * free)
            rot = rotvec_to_matrix(step[..., :3]) @ rot
            shift = shift + step[..., 3:]
        # the change only (exactly zero when every step is): an untrained refiner returns x0 itself
        change = torch.cat([matrix_to_rotvec(rot) - matrix_to_rotvec(start), shift - values[..., 3:6]], -1)
        return torch.cat([x0[..., :6] + change / std[:, :6], x0[..., 6:]], -1)
