"""A molecular energy model: elements and positions in, energy out, forces by autograd.

The system is an input here, not a buffer: ``model(numbers, pos)`` takes the atomic numbers (A,)
and positions (B, A, 3) Å of any molecule, so the prediction depends on elements and positions
alone (permuting the atoms permutes the forces and leaves the energy as it is). The atoms are
encoded with the project's ViSNet-style layers (:class:`~hemeplm.models.encoder.ViSLayer`) on an
element embedding (plus a distance-weighted embedding of the neighbours' elements) and a plain radius
graph (no neighbour cap: every pair within the cutoff, so the energy is a smooth function of the
coordinates), and the energy is a sum over atoms::

    E(x) = Σ_i [ shift(z_i) + scale · u(h_i) ]

``shift`` (per element, kcal/mol) and ``scale`` (kcal/mol) are statistics of the training labels
(:meth:`MolecularEnergy.fit_statistics`); ``u`` is an MLP on the encoder's invariant atom features.
Forces are ``−∂E/∂x``. :func:`predict` runs any model with ``energy_and_forces`` over frames in batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hemeplm.models.encoder import GaussianRBF, ViSLayer, edge_geometry
from hemeplm.models.energy import radius_pairs

MAX_Z = 100


class MolecularEnergy(nn.Module):
    """Energy of molecules from atomic numbers and positions.

    Args:
        hidden, layers, lmax, num_rbf, cutoff (Å): the encoder (as :class:`~hemeplm.config.EncoderConfig`).

    ``forward(numbers (A,), pos (B, A, 3))`` returns energies (B,) kcal/mol;
    :meth:`energy_and_forces` adds the forces (B, A, 3) kcal/mol/Å.
    """

    def __init__(self, hidden: int = 64, layers: int = 3, lmax: int = 1, num_rbf: int = 32, cutoff: float = 5.0):
        super().__init__()
        self.cutoff, self.lmax = cutoff, lmax
        self.embed = nn.Embedding(MAX_Z + 1, hidden)
        # neighbour embedding (as in TorchMD-Net and ViSNet): each atom starts from its element and its
        # neighbours' elements weighted by their distances, so the first layer already sees the geometry
        self.neighbour_embed = nn.Embedding(MAX_Z + 1, hidden)
        self.neighbour_filter = nn.Linear(num_rbf, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.rbf = GaussianRBF(num_rbf, cutoff)
        self.edge_in = nn.Linear(num_rbf, hidden)
        # the energy reads the atoms' scalars only: the last layer's vector messages would feed nothing
        self.layers = nn.ModuleList(ViSLayer(hidden, update_edges=i < layers - 1, update_vectors=i < layers - 1)
                                    for i in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("shift", torch.zeros(MAX_Z + 1))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit_statistics(self, molecules: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Set ``shift`` so that the model starts at each molecule's training mean as nearly as per-element
        energies can (least squares over the molecules' compositions; exact for one molecule, or as many
        molecules as elements; with more, each starts off by its residual, which the atom terms then learn) and
        ``scale`` to the RMS of all training force components.

        Args: ``molecules``: (numbers (A,), energy (F,) kcal/mol, forces (F, A, 3) kcal/mol/Å) per molecule.
        """
        elements = torch.unique(torch.cat([z.long().cpu() for z, _, _ in molecules]))
        counts = torch.stack([(z.long().cpu()[:, None] == elements).sum(0) for z, _, _ in molecules]).double()
        means = torch.stack([e.double().mean().cpu() for _, e, _ in molecules])
        self.shift.zero_()
        self.shift[elements.to(self.shift.device)] = (torch.linalg.pinv(counts) @ means).to(self.shift)
        square = sum(float(f.double().pow(2).sum()) for _, _, f in molecules)
        self.scale.fill_(max(1e-3, (square / sum(f.numel() for _, _, f in molecules)) ** 0.5))

    def forward(self, numbers: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, a, _ = pos.shape
        numbers = numbers.to(pos.device).long()
        flat = pos.reshape(b * a, 3)
        batch = torch.arange(b, device=pos.device).repeat_interleave(a)
        ei = radius_pairs(flat, self.cutoff, batch)
        src, dst = ei
        d, rhat, sh, cut = edge_geometry(flat, ei, self.cutoff, self.lmax)
        z = numbers.repeat(b)
        rbf = self.rbf(d)
        h = self.embed(z)
        around = self.neighbour_embed(z)[src] * self.neighbour_filter(rbf) * cut[:, None]
        h = self.combine(torch.cat([h, torch.zeros_like(h).index_add_(0, dst, around)], dim=-1))
        vec = None  # the first layer gives the atoms their vectors
        f = self.edge_in(rbf) * cut[:, None]
        for layer in self.layers:
            h, vec, f = layer(h, vec, f, sh, cut, rhat, ei)
        atom = self.shift[z].to(pos.dtype) + self.scale.to(pos.dtype) * self.out(self.norm(h)).squeeze(-1)
        return atom.view(b, a).sum(-1)

    def energy_and_forces(self, numbers: torch.Tensor, pos: torch.Tensor, create_graph: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B,) and forces (B, A, 3) ``−∂E/∂x``; ``create_graph`` to train on the forces."""
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            energy = self(numbers, pos)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad


@torch.no_grad()
def predict(model: nn.Module, numbers: np.ndarray, positions: np.ndarray, batch: int = 64,
            device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Energies (F,) and forces (F, A, 3) of frames (F, A, 3) Å, in batches; any model with
    ``energy_and_forces(numbers, pos)``."""
    z = torch.as_tensor(numbers, device=device)
    dtype = next(model.parameters()).dtype
    es, fs = [], []
    for i in range(0, len(positions), batch):
        pos = torch.as_tensor(positions[i:i + batch], dtype=dtype, device=device)
        e, f = model.energy_and_forces(z, pos)
        es.append(e.double().cpu().numpy())
        fs.append(f.double().cpu().numpy())
    return np.concatenate(es), np.concatenate(fs)
