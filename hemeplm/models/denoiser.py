"""Video transformer denoiser over (frame, token).

Each block, modulated by the diffusion step through adaLN (shift, scale and a
zero-initialised gate per sub-layer), applies

1. spatial attention among the tokens of one frame: full, or local (each
   token attends to its nearest tokens and its domain token) with global
   attention among domain tokens (contiguous residue chunks), linear in N;
2. temporal attention per token across frames, with a learned bias per head
   for the relative frame offset τ;
3. time-aware bidirectional protein↔ligand cross-attention: ligand tokens
   query pocket residues in frames t+τ, |τ| <= cross_window, and pocket
   residues query the ligand the same way, with a learned bias per τ;
4. an MLP.

Interface (see :mod:`hemeplm.diffusion`): ``denoiser(x_t, t, cond, mask)``
with x_t (B, T, N, D), t (B,), mask (B, T, N) and ``cond`` a
:class:`Conditioning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Conditioning:
    """What the denoiser is conditioned on besides x_t and the mask.

    Attributes:
        tokens: (B, N, C) token embeddings (encoder output, residue type, PLM...).
        neighbors: (B, N, K) nearest tokens in the key frame (local spatial attention) or None.
        domain: (N,) domain id of each token.
        ligand: (L,) ligand token indices; pocket: (P,) pocket token indices.
    """

    tokens: torch.Tensor
    neighbors: torch.Tensor | None
    domain: torch.Tensor
    ligand: torch.Tensor
    pocket: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer steps -> (B, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Modulation(nn.Module):
    """adaLN: LayerNorm without affine, then ``x * (1 + scale) + shift``; also returns a gate.

    c: (B, Dc); x: (B, ..., D).
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        shift, scale, gate = self.proj(c).chunk(3, dim=-1)
        view = lambda v: v.view(v.shape[0], *([1] * (x.ndim - 2)), v.shape[-1])  # noqa: E731
        return self.norm(x) * (1 + view(scale)) + view(shift), view(gate)


class MultiHead(nn.Module):
    """Projections for multi-head attention; ``attend(q_in, kv_in, bias)`` -> (..., Lq, D).

    q_in: (G, Lq, D); kv_in: (G, Lk, D); bias: broadcastable to (G, H, Lq, Lk) (float, -inf masks).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, -1).transpose(-2, -3)

    def attend(self, q_in: torch.Tensor, kv_in: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q = self.split(self.q(q_in))
        k, v = (self.split(z) for z in self.kv(kv_in).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(out.transpose(-2, -3).reshape(*q_in.shape))


class SpatialAttention(nn.Module):
    """Attention among the tokens of each frame. x: (B, T, N, D) -> (B, T, N, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.mh = MultiHead(dim, heads)
        self.domain_mh = MultiHead(dim, heads)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, t, n, d = x.shape
        if cond.neighbors is None:
            flat = x.reshape(b * t, n, d)
            return self.mh.attend(flat, flat).view(b, t, n, d)
        # domain tokens: mean of their members, global attention among domains
        m = int(cond.domain.max()) + 1
        counts = torch.zeros(m, device=x.device).index_add_(0, cond.domain, torch.ones(n, device=x.device))
        dom = x.new_zeros(b, t, m, d).index_add_(2, cond.domain, x) / counts[:, None]
        dom = dom + self.domain_mh.attend(dom.view(b * t, m, d), dom.view(b * t, m, d)).view(b, t, m, d)
        # each token: its K nearest tokens and its own domain token
        k = cond.neighbors.shape[-1]
        idx = cond.neighbors[:, None, :, :].expand(b, t, n, k)
        nbr = _gather_tokens(x, idx)
        kv = torch.cat([nbr, dom[:, :, cond.domain, None, :]], dim=3)  # (B, T, N, K+1, D)
        out = self.mh.attend(x.reshape(b * t * n, 1, d), kv.reshape(b * t * n, k + 1, d))
        return out.view(b, t, n, d)


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, T, N, D), idx (B, T, N, K) -> (B, T, N, K, D)."""
    b, t, n, d = x.shape
    k = idx.shape[-1]
    return torch.gather(x, 2, idx.reshape(b, t, n * k, 1).expand(b, t, n * k, d)).view(b, t, n, k, d)


class RelativeTimeBias(nn.Module):
    """Learned per-head bias for a relative frame offset τ in [-max_tau, max_tau] (clipped)."""

    def __init__(self, heads: int, max_tau: int):
        super().__init__()
        self.max_tau = max_tau
        self.table = nn.Embedding(2 * max_tau + 1, heads)
        nn.init.zeros_(self.table.weight)

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        """tau (...) int -> (H, ...) float."""
        return self.table(tau.clamp(-self.max_tau, self.max_tau) + self.max_tau).movedim(-1, 0)


class TemporalAttention(nn.Module):
    """Attention across frames per token, biased by τ. x: (B, T, N, D) -> same."""

    def __init__(self, dim: int, heads: int, max_tau: int):
        super().__init__()
        self.mh = MultiHead(dim, heads)
        self.bias = RelativeTimeBias(heads, max_tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        frames = torch.arange(t, device=x.device)
        bias = self.bias(frames[None, :] - frames[:, None]).to(x.dtype)  # (H, T, T)
        flat = x.permute(0, 2, 1, 3).reshape(b * n, t, d)
        return self.mh.attend(flat, flat, bias).view(b, n, t, d).permute(0, 2, 1, 3)


class CrossAttention(nn.Module):
    """Time-aware bidirectional protein↔ligand cross-attention.

    Queries of one group at frame t attend to the other group's tokens at
    frames t+τ, |τ| <= window, with a learned bias per head and τ.
    x: (B, T, N, D) -> (B, T, N, D) update (zero outside the two groups).
    """

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.lig_to_pocket = MultiHead(dim, heads)
        self.pocket_to_lig = MultiHead(dim, heads)
        self.bias = RelativeTimeBias(heads, window)

    def _one_way(self, mh: MultiHead, x: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        b, t, _, d = x.shape
        offs = torch.arange(-self.window, self.window + 1, device=x.device)
        frames = torch.arange(t, device=x.device)[:, None] + offs[None]  # (T, W)
        valid = (frames >= 0) & (frames < t)
        keys = x[:, frames.clamp(0, t - 1)][:, :, :, k_idx]  # (B, T, W, K, D)
        w, kk = offs.numel(), k_idx.numel()
        bias = self.bias(offs).to(x.dtype)[None, :, None, :, None].expand(t, -1, 1, w, kk)
        bias = bias.masked_fill(~valid[:, None, None, :, None], float("-inf")).reshape(1, t, -1, 1, w * kk)
        bias = bias.expand(b, -1, -1, -1, -1).reshape(b * t, -1, 1, w * kk)  # (B*T, H, 1, W*K)
        out = mh.attend(x[:, :, q_idx].reshape(b * t, q_idx.numel(), d), keys.reshape(b * t, w * kk, d), bias)
        return out.view(b, t, q_idx.numel(), d)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        upd = torch.zeros_like(x)
        if cond.ligand.numel() == 0 or cond.pocket.numel() == 0:
            return upd
        upd = upd.index_add(2, cond.ligand, self._one_way(self.lig_to_pocket, x, cond.ligand, cond.pocket))
        return upd.index_add(2, cond.pocket, self._one_way(self.pocket_to_lig, x, cond.pocket, cond.ligand))


class Block(nn.Module):
    """Spatial, temporal, cross-attention and MLP sub-layers, each adaLN-modulated and gated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, max_tau: int, cross_window: int):
        super().__init__()
        self.spatial = SpatialAttention(dim, heads)
        self.temporal = TemporalAttention(dim, heads, max_tau)
        self.cross = CrossAttention(dim, heads, cross_window)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.mods = nn.ModuleList(Modulation(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        h, g = self.mods[0](x, c)
        x = x + g * self.spatial(h, cond)
        h, g = self.mods[1](x, c)
        x = x + g * self.temporal(h)
        h, g = self.mods[2](x, c)
        x = x + g * self.cross(h, cond)
        h, g = self.mods[3](x, c)
        return x + g * self.mlp(h)


class VideoDenoiser(nn.Module):
    """ε-prediction network over (frame, token).

    Args:
        value_dim: D, values per token (W slots × 3).
        token_dim: C, width of ``cond.tokens``.
        dim, depth, heads, mlp_ratio, max_tau, cross_window: see DenoiserConfig.

    ``forward(x_t (B, T, N, D), t (B,), cond, mask (B, T, N)) -> (B, T, N, D)``.
    """

    def __init__(self, value_dim: int, token_dim: int, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, max_tau: int = 32, cross_window: int = 2):
        super().__init__()
        self.dim = dim
        self.value_in = nn.Linear(value_dim, dim)
        self.given = nn.Embedding(2, dim)
        self.token_in = nn.Linear(token_dim, dim)
        self.frame_pos = nn.Embedding(max_tau + 1, dim)
        self.step = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, max_tau, cross_window) for _ in range(depth))
        self.final = Modulation(dim, dim)
        self.out = nn.Linear(dim, value_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, mask: torch.Tensor) -> torch.Tensor:
        b, nt, n, _ = x_t.shape
        frames = torch.arange(nt, device=x_t.device).clamp(max=self.frame_pos.num_embeddings - 1)
        x = (self.value_in(x_t) + self.given(mask.long()) + self.token_in(cond.tokens)[:, None]
             + self.frame_pos(frames)[None, :, None])
        c = self.step(timestep_embedding(t, self.dim))
        for block in self.blocks:
            x = block(x, c, cond)
        h, _ = self.final(x, c)
        return self.out(h)
