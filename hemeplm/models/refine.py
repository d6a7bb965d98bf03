"""Junction refinement: the denoiser's last layers, which see the geometry of their own clean estimate.

The video transformer reads each token's values (a rigid-body transform and torsions) but never the
atoms they place, so it must hold the bonds *between* tokens (the peptide C-N, the angles across it,
ω, bonds between ligand groups) to 0.1 Å by predicting every token's transform independently of its
neighbours' errors; it does not (two thirds of the peptide bonds of its raw samples are more than
0.1 Å off). As AlphaFold's structure module updates its frames from features of the current frames,
:class:`JunctionRefiner` decodes the estimate of the clean frames, measures each inter-token bond
and angle pair against its reference length, and turns the per-token sums of these errors (a force
and a torque on the rigid body, and the signed ω of its two peptide bonds) together with the token's
hidden state into an update of its transform, a few times in turn. The update is learnt (its output
layer starts at zero, so an untrained refiner changes nothing) and trained only by the diffusion and
structure losses; nothing here moves an atom toward a target by a fixed rule.

Only atoms that no torsion of their token moves take part, so the estimate is decoded from the
rigid transforms alone (cheap: no torsion is applied).

Shapes: B windows, T frames, N tokens, W slots, D values per token, P pairs, Q peptide bonds.
"""

from __future__ import annotations

import torch
from torch import nn

from hemeplm.geometry.rigid import matrix_to_rotvec, rotvec_to_matrix
from hemeplm.geometry.torsion import dihedral_angle

#: per-token features: force (3), torque (3) on the rigid body, sin ω of the bond before and after
N_FEATURES = 8
#: rad and Å per unit of the output layer: the refiner makes corrections of tenths of an Å, and a smaller scale
#: keeps each optimiser step on its weights (about the learning rate per weight) from moving tokens by more
STEP_SCALE = 0.1


def rigid_pairs(layout: dict, internal: dict, quads: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inter-token pairs and peptide bonds the refiner reads, as (token, slot) of each atom.

    Args:
        layout: token layout (``atom_token``, ``atom_slot``); internal: ``pair_index`` (2, P),
            ``pair_length`` (P,), ``torsion_moving`` (N, K, W); quads: (Q, 4) peptide atom quads.
    Returns:
        ``pair_token``, ``pair_slot`` (2, P'), ``pair_length`` (P',) for the pairs whose atoms no torsion
        moves, and ``quad_token``, ``quad_slot`` (4, Q).
    """
    tok, slot = layout["atom_token"], layout["atom_slot"]
    moved = internal["torsion_moving"].any(1)  # (N, W)
    index = internal["pair_index"].long()
    rigid = ~moved[tok[index], slot[index]].any(0)
    pairs = index[:, rigid]
    q = quads.long().T
    return {"pair_token": tok[pairs], "pair_slot": slot[pairs], "pair_length": internal["pair_length"][rigid].float(),
            "quad_token": tok[q], "quad_slot": slot[q]}


class JunctionRefiner(nn.Module):
    """Update each token's rigid transform from its hidden state and its inter-token bond errors.

    Args:
        dim: width of the denoiser's hidden states; steps: refinement rounds (weights shared).
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.features = nn.Linear(N_FEATURES, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())
        self.out = nn.Linear(dim, 6)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def place(rot: torch.Tensor, shift: torch.Tensor, cond, token: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Positions (B, T, M, 3) Å of atoms (token (M,), slot (M,)) placed by per-token rotations (B, T, N, 3, 3)
        and translations (B, T, N, 3) in their anchor axes (``cond.frames``, ``cond.origins``)."""
        body = cond.body[:, token, slot][:, None]  # (B, 1, M, 3)
        local = torch.einsum("btmij,btmj->btmi", rot[:, :, token], body) + shift[:, :, token]
        return torch.einsum("bmij,btmj->btmi", cond.frames[:, token], local) + cond.origins[:, None, token]

    def geometry(self, rot: torch.Tensor, shift: torch.Tensor, cond, pairs: dict) -> torch.Tensor:
        """(B, T, N, :data:`N_FEATURES`) per-token features of the estimate's inter-token geometry.

        For each pair (a, b) the error ``(|x_b - x_a| - L) (x_b - x_a)/|x_b - x_a|`` pulls a toward b and b
        toward a; each token sums the pulls on its atoms (a force, in its anchor axes) and their moments
        about its origin (a torque); each peptide bond gives its two residues sin ω (0 when planar).
        """
        b, t, n = shift.shape[:3]
        pulls, omegas = shift.new_zeros(b, t, n, 6), shift.new_zeros(b, t, n, 2)
        tok, slot = pairs["pair_token"], pairs["pair_slot"]
        if tok.shape[1]:
            xa, xb = (self.place(rot, shift, cond, tok[i], slot[i]) for i in range(2))
            d = xb - xa
            length = d.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            pull = (length - pairs["pair_length"][:, None]) * d / length  # on a; -pull on b
            for side, sign in ((0, 1.0), (1, -1.0)):
                force = sign * torch.einsum("bpji,btpj->btpi", cond.frames[:, tok[side]], pull)
                arm = torch.einsum("btpij,bpj->btpi", rot[:, :, tok[side]], cond.body[:, tok[side], slot[side]])
                pulls = pulls.index_add(2, tok[side], torch.cat([force, torch.cross(arm, force, dim=-1)], -1))
        qt, qs = pairs["quad_token"], pairs["quad_slot"]
        if qt.shape[1]:
            sin_omega = dihedral_angle(*(self.place(rot, shift, cond, qt[i], qs[i]) for i in range(4))).sin()
            omegas = omegas.index_add(2, qt[2], torch.stack([sin_omega, torch.zeros_like(sin_omega)], -1))
            omegas = omegas.index_add(2, qt[1], torch.stack([torch.zeros_like(sin_omega), sin_omega], -1))
        return torch.cat([pulls, omegas], -1)

    def forward(self, x0: torch.Tensor, hidden: torch.Tensor, cond, mask: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor, pairs: dict) -> torch.Tensor:
        """Refine a clean estimate.

        Args:
            x0: (B, T, N, D) normalised values (``value * std + mean`` is the rotation vector, translation in Å, ...).
            hidden: (B, T, N, dim) the denoiser's last hidden states; mask: (B, T, N) True where given (kept).
            mean, std: (N, D) normalisation; pairs: :func:`rigid_pairs` (token indices of ``cond``'s system).
        Returns:
            (B, T, N, D) the estimate with updated rotation vectors and translations.
        """
        free = (~mask)[..., None].to(x0.dtype)
        rigid = x0[..., :6] * std[:, :6] + mean[:, :6]
        start = rotvec_to_matrix(rigid[..., :3])
        rot, shift = start, rigid[..., 3:]
        for _ in range(self.steps):
            feats = self.geometry(rot, shift, cond, pairs)
            step = self.out(self.mlp(self.norm(hidden + self.features(feats)))) * (STEP_SCALE * free)
            rot = rotvec_to_matrix(step[..., :3]) @ rot
            shift = shift + step[..., 3:]
        # the change only (exactly zero when every step is): an untrained refiner returns x0 itself
        turn = matrix_to_rotvec(rot) - matrix_to_rotvec(start)
        return x0 + torch.cat([turn, shift - rigid[..., 3:], torch.zeros_like(x0[..., 6:])], -1) / torch.cat(
            [std[:, :6], torch.ones_like(std[:, 6:])], -1)
