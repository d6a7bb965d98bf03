"""ViSNet-style SE(3)-invariant atom encoder, written for this project.

Primitives -> layer -> encoder, in the spirit of ViSNet (Wang et al., 2024):

* per-atom scalars ``h`` (A, C) and vectors ``vec`` (A, S, C) in the real
  spherical-harmonic basis of degrees 1..lmax (``S = (lmax+1)^2 - 1``, from
  e3nn), per-edge features ``f`` (E, C) updated in every layer;
* vector–scalar interactive message passing: attention-weighted scalar
  messages; vector messages mixing neighbour vectors and edge harmonics;
* runtime geometry: the scalar update reads vector dot products
  ``<W1 vec_i, W2 vec_i>``, the edge update reads the dot product of the two
  end atoms' vectors rejected from the bond direction (dihedral information);
* a cosine cutoff on every message.

Everything is batched (index_add over edges, no Python loop over atoms or
edges). Scalars and edge features are invariant; vectors rotate with the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hemeplm.models.graph import N_EDGE_TYPES, build_graph


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(E,) -> (E,) smooth cutoff, 1 at 0, 0 beyond ``cutoff``."""
    return 0.5 * (torch.cos(d * math.pi / cutoff) + 1.0) * (d < cutoff).to(d.dtype)


class GaussianRBF(nn.Module):
    """(E,) distances -> (E, num_rbf) Gaussian expansion on [0, cutoff]."""

    def __init__(self, num_rbf: int, cutoff: float):
        super().__init__()
        self.register_buffer("mu", torch.linspace(0.0, cutoff, num_rbf))
        self.gamma = (num_rbf / cutoff) ** 2 / 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (d[:, None] - self.mu) ** 2)


def rejected_dot(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Dot products (E, C) of the components of vectors ``a`` and ``b`` (E, 3, C) orthogonal to unit directions
    ``u`` (E, 3): ``a·b − (a·u)(b·u)``, without forming the rejected vectors."""
    u = u[:, :, None]
    return (a * b).sum(1) - (a * u).sum(1) * (b * u).sum(1)


class ViSLayer(nn.Module):
    """One vector–scalar interactive message-passing layer.

    Shapes: h (A, C), vec (A, S, C), f (E, C), sh (E, S), cut (E,),
    rhat (E, 3) unit src->dst directions, edge_index (2, E) ``[src, dst]``.
    Returns updated (h, vec, f). ``vec`` None stands for zeros (the first layer: the atoms have no vectors yet),
    and the terms that read it are skipped: the same result, without the work. ``update_vectors`` False (a last
    layer whose vectors nothing reads) returns ``vec`` as it came, without the vector messages.
    """

    def __init__(self, hidden: int, heads: int = 4, update_edges: bool = True, update_vectors: bool = True):
        super().__init__()
        self.heads, self.hidden, self.update_vectors = heads, hidden, update_vectors
        self.norm = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 3 * hidden)
        self.dk = nn.Linear(hidden, hidden)
        self.dv = nn.Linear(hidden, 3 * hidden)
        self.vec_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, 3 * hidden)
        self.update_edges = update_edges
        if update_edges:
            self.w_src = nn.Linear(hidden, hidden, bias=False)
            self.w_dst = nn.Linear(hidden, hidden, bias=False)
            self.f_proj = nn.Linear(hidden, hidden)

    def forward(self, h, vec, f, sh, cut, rhat, edge_index):
        src, dst = edge_index
        a, c, e = h.shape[0], self.hidden, f.shape[0]
        x = self.norm(h)
        q = self.q(x)[dst].view(e, self.heads, -1)
        k = (self.k(x)[src] * F.silu(self.dk(f))).view(e, self.heads, -1)
        attn = F.silu((q * k).sum(-1)) * cut[:, None]  # (E, H)
        v = (self.v(x)[src] * F.silu(self.dv(f))).view(e, self.heads, -1) * attn[..., None]
        m_s, m_v1, m_v2 = v.reshape(e, 3 * c).split(c, dim=-1)
        dh = h.new_zeros(a, c).index_add_(0, dst, m_s)
        o1, o2, o3 = self.out(dh).split(c, dim=-1)
        if vec is None:
            first = (h.new_zeros(a, sh.shape[1], c).index_add_(0, dst, sh[:, :, None] * m_v2[:, None, :])
                     if self.update_vectors else None)
            return h + o3, first, f
        vec1, vec2, vec3 = self.vec_proj(vec).split(c, dim=-1)
        h = h + (vec1 * vec2).sum(1) * o2 + o3
        if self.update_edges:
            l1 = vec[:, :3, :]
            f = f + F.silu(self.f_proj(f)) * rejected_dot(self.w_src(l1)[src], self.w_dst(l1)[dst], rhat)
        if not self.update_vectors:
            return h, vec, f
        mv = sh[:, :, None] * m_v2[:, None, :] + vec[src] * m_v1[:, None, :]
        return h, vec + vec3 * o1[:, None, :] + torch.zeros_like(vec).index_add_(0, dst, mv), f


def edge_geometry(pos: torch.Tensor, edge_index: torch.Tensor, cutoff: float, lmax: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edge lengths (E,), unit vectors (E, 3) from source to target, their spherical harmonics of degrees
    1..``lmax`` (E, (lmax+1)²-1) and cosine cutoffs (E,), for atom positions (A, 3) and ``edge_index`` (2, E)."""
    from e3nn import o3

    src, dst = edge_index
    rij = pos[dst] - pos[src]
    d = rij.norm(dim=-1)
    rhat = rij / d.clamp(min=1e-6)[:, None]
    sh = o3.spherical_harmonics(list(range(1, lmax + 1)), rhat, normalize=False, normalization="component")
    return d, rhat, sh, cosine_cutoff(d, cutoff)


class AtomEncoder(nn.Module):
    """Encoder over the atoms of one or more key frames.

    Args:
        n_elements, n_atom_types, n_ligand_features: sizes of the atom inputs.
        hidden, layers, lmax, num_rbf, cutoff, max_neighbors: see EncoderConfig.

    ``forward(pos, static, node_mask)``:
        pos: (B, A, 3) Å; static: dict of per-atom tensors (``element``, ``atom_type``,
        ``ligand_features``, ``charge``, ``is_ligand``, ``polar``, ``residue`` (A,), ``bonds`` (2, E));
        node_mask: (B, A) bool, atoms whose positions are known (None = all).
        Returns ``h`` (B, A, C) invariant atom features and ``vec`` (B, A, S, C).
    """

    def __init__(self, n_elements: int, n_atom_types: int, n_ligand_features: int, hidden: int = 64,
                 layers: int = 3, lmax: int = 1, num_rbf: int = 32, cutoff: float = 5.0, max_neighbors: int = 24):
        super().__init__()
        self.cutoff, self.max_neighbors, self.lmax = cutoff, max_neighbors, lmax
        self.element = nn.Embedding(n_elements, hidden)
        self.atom_type = nn.Embedding(n_atom_types, hidden)
        self.ligand = nn.Linear(n_ligand_features + 1, hidden)
        self.rbf = GaussianRBF(num_rbf, cutoff)
        self.edge_in = nn.Linear(num_rbf, hidden)
        self.edge_type = nn.Embedding(2 * N_EDGE_TYPES, hidden)
        self.layers = nn.ModuleList(ViSLayer(hidden, update_edges=i < layers - 1) for i in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.n_sh = (lmax + 1) ** 2 - 1

    def forward(self, pos: torch.Tensor, static: dict, node_mask: torch.Tensor | None = None):
        b, a, _ = pos.shape
        flat = pos.reshape(b * a, 3)
        rep = lambda t: t.repeat(b, *([1] * (t.ndim - 1)))  # noqa: E731
        batch = torch.arange(b, device=pos.device).repeat_interleave(a)
        offset = (torch.arange(b, device=pos.device) * a).repeat_interleave(static["bonds"].shape[1])
        bonds = static["bonds"].repeat(1, b) + offset
        mask = None if node_mask is None else node_mask.reshape(-1)
        g = build_graph(flat, bonds, rep(static["is_ligand"]), rep(static["polar"]),
                        rep(static["residue"]),  # edges never join two frames, so ids need no per-frame offset
                        self.cutoff, self.max_neighbors, batch=batch, node_mask=mask)
        d, rhat, sh, cut = edge_geometry(flat, g.edge_index, self.cutoff, self.lmax)
        # covalent edges beyond the cutoff still carry a message
        cut = torch.where(g.edge_type == 0, cut.clamp(min=0.5), cut)
        lig_in = torch.cat([static["ligand_features"], static["charge"][:, None]], dim=-1)
        h = self.element(static["element"]) + self.atom_type(static["atom_type"]) + self.ligand(lig_in)
        h = rep(h)
        vec = None  # the first layer gives the atoms their vectors
        f = self.edge_in(self.rbf(d)) * cut[:, None] + self.edge_type(g.edge_type + N_EDGE_TYPES * g.cross.long())
        for layer in self.layers:
            h, vec, f = layer(h, vec, f, sh, cut, rhat, g.edge_index)
        return self.norm(h).view(b, a, -1), vec.view(b, a, self.n_sh, -1)
