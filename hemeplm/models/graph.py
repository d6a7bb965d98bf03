"""Molecular graphs for one frame: covalent, hydrogen-bond and contact edges.

Spatial neighbours come from ``torch_cluster`` (k nearest within a cutoff,
kept where the relation is mutual, so every edge has its reverse, the
neighbour cap keeps the closest atoms and the graph stays linear in the
number of atoms). Protein–ligand edges are flagged as ``cross``; together
they are the bipartite protein–ligand graph of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EDGE_COVALENT, EDGE_HBOND, EDGE_CONTACT = 0, 1, 2
N_EDGE_TYPES = 3
HBOND_CUTOFF = 3.5  # Å between donor/acceptor heavy atoms (N, O)


@dataclass
class Graph:
    """Directed edges ``src -> dst`` (both directions present).

    Attributes (E edges):
        edge_index: (2, E) int64.
        edge_type: (E,) int64 in {covalent, hbond, contact}.
        cross: (E,) bool, True for protein–ligand edges.
    """

    edge_index: torch.Tensor
    edge_type: torch.Tensor
    cross: torch.Tensor

    def bipartite(self) -> "Graph":
        """The protein–ligand edges only."""
        m = self.cross
        return Graph(self.edge_index[:, m], self.edge_type[m], self.cross[m])


def neighbor_pairs(pos: torch.Tensor, cutoff: float, max_neighbors: int, batch: torch.Tensor | None = None,
                   node_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pairs within ``cutoff`` where each atom is among the other's ``max_neighbors`` nearest.

    Both directions of every pair are present, and no atom has more than
    ``max_neighbors`` neighbours.

    Args:
        pos: (A, 3); batch: (A,) graph id per atom or None; node_mask: (A,) bool,
            atoms that take part (others get no edges).
    Returns:
        (2, E) int64 ``[src, dst]`` with src != dst.
    """
    from torch_cluster import knn_graph

    idx = torch.arange(len(pos), device=pos.device)
    if node_mask is not None:
        idx = idx[node_mask]
        pos = pos[node_mask]
        batch = None if batch is None else batch[node_mask]
    if len(pos) < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    k = min(max_neighbors, len(pos) - 1)
    ei = knn_graph(pos.detach(), k=k, batch=batch, loop=False)
    d = (pos[ei[0]] - pos[ei[1]]).norm(dim=-1)
    ei = ei[:, d <= cutoff]
    n = len(pos)
    ei = ei[:, torch.isin(ei[0] * n + ei[1], ei[1] * n + ei[0])]
    return idx[ei]


def build_graph(pos: torch.Tensor, bonds: torch.Tensor, is_ligand: torch.Tensor, polar: torch.Tensor,
                residue: torch.Tensor, cutoff: float = 5.0, max_neighbors: int = 32,
                batch: torch.Tensor | None = None, node_mask: torch.Tensor | None = None) -> Graph:
    """Graph of one or several frames (batched by ``batch``).

    Args:
        pos: (A, 3) coordinates in Å.
        bonds: (2, B) covalent bonds (any direction).
        is_ligand: (A,) bool.
        polar: (A,) bool, N or O atoms (hydrogen-bond donors/acceptors).
        residue: (A,) residue id; H-bond edges join different residues.
        cutoff, max_neighbors: spatial neighbourhood.
        node_mask: (A,) bool, atoms whose positions are known (others get no edges).
    Returns:
        :class:`Graph` with the union of covalent and spatial edges.
    """
    n = len(pos)
    if node_mask is not None and bonds.numel():
        keep = node_mask[bonds[0]] & node_mask[bonds[1]]
        bonds = bonds[:, keep]
    cov = torch.cat([bonds, bonds.flip(0)], dim=1)
    spatial = neighbor_pairs(pos, cutoff, max_neighbors, batch, node_mask)
    ei = torch.cat([cov, spatial], dim=1)
    key = ei[0] * n + ei[1]
    key, first = _unique_first(key)
    ei = ei[:, first]
    is_cov = first < cov.shape[1]
    src, dst = ei
    d = (pos[src] - pos[dst]).norm(dim=-1)
    hb = (~is_cov) & polar[src] & polar[dst] & (residue[src] != residue[dst]) & (d <= HBOND_CUTOFF)
    etype = torch.full_like(src, EDGE_CONTACT)
    etype[hb] = EDGE_HBOND
    etype[is_cov] = EDGE_COVALENT
    return Graph(ei, etype, is_ligand[src] != is_ligand[dst])


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique values of ``key`` and the first position of each."""
    uniq, inv = torch.unique(key, return_inverse=True)
    first = torch.full((len(uniq),), len(key), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inv, torch.arange(len(key), device=key.device), reduce="amin")
    return uniq, first
