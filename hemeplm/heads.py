"""Energy head: per-atom energies summed per residue and in total; forces by autograd.

The head reads the encoder's invariant atom features of one frame. Energies
are learnt in normalised units (``(E - mean) / std`` over the training
frames) and returned in kcal/mol; forces ``F = -∂E/∂x`` in kcal/mol/Å are
compared with the MD forces on each heavy atom (hydrogen forces folded in).
"""

from __future__ import annotations

import torch
from torch import nn


class EnergyHead(nn.Module):
    """Invariant atom features -> per-atom, per-residue and total energy.

    Args:
        hidden: C, width of the atom features.
        mlp_hidden: width of the per-atom MLP.

    The last layer starts at zero, so an untrained head predicts the mean energy.

    ``forward(h (B, A, C), residue (A,), n_residues)`` returns ``atom`` (B, A),
    ``residue`` (B, R) and ``total`` (B,) in normalised units.
    """

    def __init__(self, hidden: int, mlp_hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.SiLU(), nn.Linear(mlp_hidden, mlp_hidden),
                                 nn.SiLU(), nn.Linear(mlp_hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, residue: torch.Tensor, n_residues: int) -> dict[str, torch.Tensor]:
        # per-atom terms scaled by 1/sqrt(A) so that the total starts O(1) in normalised units
        atom = self.mlp(h).squeeze(-1) / h.shape[1] ** 0.5
        res = atom.new_zeros(atom.shape[0], n_residues).index_add_(1, residue, atom)
        return {"atom": atom, "residue": res, "total": atom.sum(-1)}
