"""Video transformer denoiser over (frame, token).

Each block, modulated by the diffusion step through adaLN (shift, scale and a
zero-initialised gate per sub-layer), applies

1. spatial attention among the tokens of one frame, biased per head by the
   key frame's pair geometry (distance RBFs, the partner's direction in the
   token's frame, their relative orientation, and a relative sequence-offset
   embedding; :class:`PairEmbedding`): full (N² per frame, for small
   systems), or local (each token attends to its K nearest tokens and its
   domain token) with global attention among domain tokens (contiguous
   residue chunks), linear in N;
2. temporal attention per token across frames, with a learned bias per head
   for the relative frame offset τ;
3. time-aware bidirectional protein↔ligand cross-attention: ligand tokens
   query pocket residues in frames t+τ, |τ| <= cross_window, and pocket
   residues query the ligand the same way, with a learned bias per τ (in
   local mode, only the other group's tokens among a query's K nearest);
4. an MLP.

Local attention gathers projected keys in chunks of tokens (recomputed in the
backward pass), so nothing of size N×N or unbounded N×K×D is allocated: time
and memory grow linearly in tokens. A system too large for one pass can also
be denoised in overlapping fragments (:mod:`hemeplm.generate.fragment`), which
sampling does when N exceeds ``VideoDenoiser.max_tokens``.

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
from torch.utils.checkpoint import checkpoint


@dataclass
class Conditioning:
    """What the denoiser is conditioned on besides x_t and the mask.

    Attributes:
        tokens: (B, N, C) token embeddings (per-slot encoder features, body coordinates, residue type, PLM...).
        neighbors: (B, N, K) nearest tokens in the key frame (local spatial attention) or None.
        domain: (N,) domain id of each token.
        ligand: (L,) ligand token indices; pocket: (P,) pocket token indices.
        centres: (B, N, 3) Å, token positions in the key frame (a residue's Cα; a ligand group's
            known atoms' centre, or its anchor Cα when none is known).
        frames: (B, N, 3, 3) the axes of each token's anchor frame in the key frame.
        seq: (N,) residue index along the chain of residue tokens, -1 for ligand groups.
        known: (B, N) bool, tokens whose key-frame position is known.
        origins: (B, N, 3) Å, the origin of each token's anchor frame in the key frame.
        body: (B, N, W, 3) Å, each token's body coordinates (:func:`hemeplm.data.internal.body_coordinates`).
        index: (N,) each token's index in the whole system (a fragment holds some of them).
        contacts: (3, C) long, window and two atoms (whole-system numbering) of each candidate contact the
            refiner measures (:func:`hemeplm.models.refine.contacts`).
        lag: (B,) ps, the time between the window's frames, for a model trained at several lags
            (``data.lags``); None for a model of one lag.
    """

    tokens: torch.Tensor
    neighbors: torch.Tensor | None
    domain: torch.Tensor
    ligand: torch.Tensor
    pocket: torch.Tensor
    centres: torch.Tensor
    frames: torch.Tensor
    seq: torch.Tensor
    known: torch.Tensor
    origins: torch.Tensor
    body: torch.Tensor
    index: torch.Tensor
    contacts: torch.Tensor
    lag: torch.Tensor | None = None

    def select(self, tokens: torch.Tensor) -> dict:
        """The per-token fields of the sub-system ``tokens`` (N',) (for fragments)."""
        return dict(tokens=self.tokens[:, tokens], centres=self.centres[:, tokens], frames=self.frames[:, tokens],
                    seq=self.seq[tokens], known=self.known[:, tokens], origins=self.origins[:, tokens],
                    body=self.body[:, tokens], index=self.index[tokens], contacts=self.contacts, lag=self.lag)


#: sequence offsets beyond this share a bucket; one more bucket for pairs with a ligand group
MAX_SEQ_OFFSET = 16
#: Gaussian distance features of token pairs, centres spread over 0..PAIR_RANGE Å
PAIR_RBF, PAIR_RANGE = 16, 24.0


def pair_features(cond: Conditioning, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Invariant geometry of token pairs (i, j) on the key frame.

    Args:
        idx: None for every pair, or (B, N, K) the partners j of each i.
    Returns:
        float (B, N, M, 13 + PAIR_RBF): distance RBFs, the direction of j in i's frame, the relative
        rotation R_iᵀR_j, whether both positions are known; and long (B, N, M) sequence-offset bucket.
    """
    b, n, _ = cond.centres.shape
    if idx is None:
        idx = torch.arange(n, device=cond.centres.device).expand(b, n, n)
    rows = torch.arange(b, device=idx.device)[:, None, None]
    rij = cond.centres[rows, idx] - cond.centres[:, :, None]  # (B, N, M, 3)
    d = rij.norm(dim=-1, keepdim=True)
    local = torch.einsum("bnji,bnmj->bnmi", cond.frames, rij) / (d + 1.0)
    rel = torch.einsum("bnji,bnmjk->bnmik", cond.frames, cond.frames[rows, idx]).flatten(-2)
    mu = torch.linspace(0, PAIR_RANGE, PAIR_RBF, device=d.device, dtype=d.dtype)
    rbf = torch.exp(-((d - mu) / (PAIR_RANGE / PAIR_RBF)) ** 2)
    known = (cond.known[:, :, None] & cond.known[rows, idx]).to(d.dtype)[..., None]
    si, sj = cond.seq[None, :, None].expand_as(idx), cond.seq[idx]
    offset = (sj - si).clamp(-MAX_SEQ_OFFSET, MAX_SEQ_OFFSET) + MAX_SEQ_OFFSET
    bucket = torch.where((si < 0) | (sj < 0), torch.full_like(offset, 2 * MAX_SEQ_OFFSET + 1), offset)
    return torch.cat([rbf, local, rel, known], -1), bucket


N_PAIR_FEATURES = PAIR_RBF + 13


class PairEmbedding(nn.Module):
    """Pair features -> (B, N, M, E) embedding shared by the blocks (each projects it to a per-head bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.geom = nn.Sequential(nn.Linear(N_PAIR_FEATURES, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.seq = nn.Embedding(2 * MAX_SEQ_OFFSET + 2, dim)

    def forward(self, cond: Conditioning, idx: torch.Tensor | None) -> torch.Tensor:
        feats, bucket = pair_features(cond, idx)
        return self.geom(feats.to(self.seq.weight.dtype)) + self.seq(bucket)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer steps -> (B, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def lag_embedding(lag_ps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) lags in ps -> (B, dim): the sinusoidal embedding of ``LAG_SCALE`` · log2(lag) (a doubling of the lag
    moves it as far as ``LAG_SCALE`` diffusion steps move :func:`timestep_embedding`)."""
    return timestep_embedding(LAG_SCALE * torch.log2(lag_ps.float()), dim)


#: the lag embedding's scale: 1 ps to 1 ns spans 0 to 1000 (the diffusion steps' range)
LAG_SCALE = 100.0


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


#: elements of one gathered (..., K, D) key tensor in local attention: tokens are processed in chunks
#: of that size (and recomputed in the backward pass), so peak memory stays bounded for any N
CHUNK_ELEMENTS = 1 << 24


def in_chunks(fn, n: int, per_item: int, dim: int) -> torch.Tensor:
    """``torch.cat([fn(start, stop) ...], dim)`` over chunks of ``range(n)``.

    A chunk holds at most ``CHUNK_ELEMENTS // per_item`` items. Under autograd each chunk is
    checkpointed (its intermediates are recomputed in the backward pass), so only one chunk's
    gathered keys are alive at a time in training too.
    """
    size = max(1, CHUNK_ELEMENTS // max(1, per_item))
    if size >= n:
        return fn(0, n)
    parts = []
    for start in range(0, n, size):
        stop = min(n, start + size)
        if torch.is_grad_enabled():
            parts.append(checkpoint(fn, start, stop, use_reentrant=False))
        else:
            parts.append(fn(start, stop))
    return torch.cat(parts, dim)


class MultiHead(nn.Module):
    """Projections for multi-head attention.

    ``attend(q_in, kv_in, bias)``: q_in (G, Lq, D), kv_in (G, Lk, D), bias broadcastable to
    (G, H, Lq, Lk) (float, -inf masks) -> (G, Lq, D), every query against every key.
    ``attend_each``: every query against its own key set (local attention).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, D) -> (..., H, L, D/H)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-2, -3)

    def attend(self, q_in: torch.Tensor, kv_in: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(kv_in).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self.split(self.q(q_in)), self.split(k), self.split(v), attn_mask=bias)
        return self.o(out.transpose(-2, -3).flatten(-2))

    def attend_each(self, q: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Each query against its own S keys: q (..., D) from ``self.q``, kv (..., S, 2D) from ``self.kv``,
        bias None or broadcastable to (..., S, H).

        Returns (..., D), output-projected.
        """
        lead, d, s = q.shape[:-1], q.shape[-1], kv.shape[-2]
        x = q.numel() // d
        kvh = kv.reshape(x, s, 2, self.heads, -1)
        mask = None if bias is None else bias.expand(*lead, s, self.heads).reshape(x, s, self.heads).transpose(
            1, 2)[:, :, None].to(q.dtype)
        out = F.scaled_dot_product_attention(q.reshape(x, self.heads, 1, -1), kvh[:, :, 0].transpose(1, 2),
                                             kvh[:, :, 1].transpose(1, 2), attn_mask=mask)
        return self.o(out.reshape(*lead, d))


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of a per-frame table for each query: table (B, T, R, E), idx (B, Q, K) -> (B, T, Q, K, E)."""
    b, t, r, e = table.shape
    q, k = idx.shape[1:]
    base = (torch.arange(b * t, device=table.device) * r).view(b, t, 1, 1)
    return table.reshape(-1, e).index_select(0, (base + idx[:, None]).reshape(-1)).view(b, t, q, k, e)


class SpatialAttention(nn.Module):
    """Attention among the tokens of each frame, biased by the key frame's pair geometry.

    ``forward(x (B, T, N, D), cond, pair (B, N, M, E)) -> (B, T, N, D)``; ``pair`` is the
    :class:`PairEmbedding` of the pairs attended, projected here to one bias per head.
    ``cond.neighbors`` None: every token attends to every token (N² per frame; small systems;
    M = N). Otherwise local: each token attends to its K nearest tokens (M = K) and to its domain
    token (no bias); the domain tokens (members' mean) first attend to each other globally. Keys
    and values are projected once per token and gathered in chunks of tokens, so time and memory
    grow as N·K.
    """

    def __init__(self, dim: int, heads: int, pair_dim: int):
        super().__init__()
        self.mh = MultiHead(dim, heads)
        self.domain_mh = MultiHead(dim, heads)
        self.bias = nn.Linear(pair_dim, heads)

    def domains(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """(B, T, N, D), domain (N,) ids 0..M-1 -> (B, T, M, D) domain tokens after global attention."""
        b, t, n, d = x.shape
        m = int(domain.max()) + 1
        counts = torch.bincount(domain, minlength=m).clamp(min=1).to(x.dtype)
        dom = x.new_zeros(b, t, m, d).index_add_(2, domain, x) / counts[:, None]
        flat = dom.view(b * t, m, d)
        return dom + self.domain_mh.attend(flat, flat).view(b, t, m, d)

    def forward(self, x: torch.Tensor, cond: Conditioning, pair: torch.Tensor) -> torch.Tensor:
        b, t, n, d = x.shape
        bias = self.bias(pair)  # (B, N, M, H)
        if cond.neighbors is None:  # 4-D attention (B·T, H, N, N): torch.compile's kernels take no 5-D inputs
            flat = x.reshape(b * t, n, d)
            mask = bias.permute(0, 3, 1, 2)[:, None].expand(b, t, -1, n, n).reshape(b * t, -1, n, n)
            return self.mh.attend(flat, flat, mask.to(x.dtype)).view(b, t, n, d)
        q = self.mh.q(x)
        # one key table: the N tokens, then the M domain tokens; token i reads its K neighbours and N + domain[i]
        table = self.mh.kv(torch.cat([x, self.domains(x, cond.domain)], dim=2))
        keys = torch.cat([cond.neighbors, (n + cond.domain).expand(b, n)[..., None]], dim=-1)  # (B, N, K+1)
        bias = torch.cat([bias, bias.new_zeros(b, n, 1, bias.shape[-1])], dim=2)[:, None]  # (B, 1, N, K+1, H)

        def chunk(start: int, stop: int) -> torch.Tensor:
            return self.mh.attend_each(q[:, :, start:stop], gather_rows(table, keys[:, start:stop]),
                                       bias[:, :, start:stop])

        return in_chunks(chunk, n, b * t * keys.shape[-1] * 2 * d, dim=2)


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

    Queries of one group (ligand or pocket tokens) at frame t attend to tokens of the other
    group at frames t+τ, |τ| <= window, with a learned bias per head and τ. Without
    ``cond.neighbors`` a query sees the whole other group (cost L·P); with them (local mode)
    only the other group's members among its K nearest tokens (cost (L+P)·K, linear in N even
    when the "ligand" grows with the system, e.g. kept waters). Queries go in chunks either way.
    x: (B, T, N, D) -> (B, T, N, D) update (zero outside the two groups).
    """

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.lig_to_pocket = MultiHead(dim, heads)
        self.pocket_to_lig = MultiHead(dim, heads)
        self.bias = RelativeTimeBias(heads, window)

    def _full(self, mh: MultiHead, x: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        b, t, _, d = x.shape
        offs = torch.arange(-self.window, self.window + 1, device=x.device)
        frames = torch.arange(t, device=x.device)[:, None] + offs[None]
        valid = (frames >= 0) & (frames < t)
        frames = frames.clamp(0, t - 1)
        w, kk = offs.numel(), k_idx.numel()
        k, v = (z[:, frames].reshape(b * t, w * kk, d) for z in mh.kv(x[:, :, k_idx]).chunk(2, dim=-1))
        bias = self.bias(offs).to(x.dtype)[None, :, :, None].expand(t, -1, -1, kk)  # (T, H, W, K)
        bias = bias.masked_fill(~valid[:, None, :, None], float("-inf")).reshape(1, t, -1, 1, w * kk)
        bias = bias.expand(b, -1, -1, -1, -1).reshape(b * t, -1, 1, w * kk)
        q = mh.q(x[:, :, q_idx]).reshape(b * t, q_idx.numel(), d)
        k, v = mh.split(k), mh.split(v)

        def chunk(start: int, stop: int) -> torch.Tensor:
            out = F.scaled_dot_product_attention(mh.split(q[:, start:stop]), k, v, attn_mask=bias)
            return out.transpose(-2, -3).flatten(-2)

        out = in_chunks(chunk, q_idx.numel(), b * t * mh.heads * w * kk, dim=1)
        return mh.o(out).view(b, t, q_idx.numel(), d)

    def _local(self, mh: MultiHead, x: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor,
               neighbors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local mode: returns the queries that have a partner among their neighbours, and their update.

        A query token's partners are gathered once with all their T frames (token-major rows);
        its T frames then attend to them together, a band mask keeping |τ| <= window.
        """
        b, t, n, d = x.shape
        h = mh.heads
        slot = torch.full((n,), -1, dtype=torch.long, device=x.device)
        slot[k_idx] = torch.arange(k_idx.numel(), device=x.device)
        cand = slot[neighbors[:, q_idx]]  # (B, Q, K): position among the other group's tokens, -1 if not in it
        found = cand >= 0
        # only queries with a partner, and only as many candidate slots as the most partnered one needs
        active = found.any(-1).any(0)
        q_idx, cand, found = q_idx[active], cand[:, active], found[:, active]
        kk = int(found.sum(-1).max()) if q_idx.numel() else 0
        if kk == 0:
            return q_idx, x.new_zeros(b, t, 0, d)
        first = torch.argsort((~found).to(torch.int8), dim=-1, stable=True)[..., :kk]
        cand, found = cand.gather(-1, first).clamp(min=0), found.gather(-1, first)
        frames = torch.arange(t, device=x.device)
        tau = frames[None, :] - frames[:, None]  # (query frame, key frame)
        band = self.bias(tau).to(x.dtype).masked_fill(tau.abs() > self.window, -1e9)  # (H, T, T)
        band = band[:, :, None, :].expand(-1, -1, kk, -1).reshape(1, h, t, kk * t)  # keys ordered (k, frame)
        g = k_idx.numel()
        table = mh.kv(x[:, :, k_idx]).transpose(1, 2).reshape(b * g, t * 2 * d)  # token-major rows
        q = mh.q(x[:, :, q_idx]).transpose(1, 2)  # (B, Q, T, D)

        def chunk(start: int, stop: int) -> torch.Tensor:
            c = stop - start
            rows = (torch.arange(b, device=x.device)[:, None, None] * g + cand[:, start:stop]).reshape(-1)
            kv = table.index_select(0, rows).view(b * c, kk, t, 2, h, -1)
            k, v = (kv[:, :, :, i].permute(0, 3, 1, 2, 4).reshape(b * c, h, kk * t, -1) for i in range(2))
            off = (~found[:, start:stop]).to(x.dtype).repeat_interleave(t, dim=-1).view(b * c, 1, 1, kk * t) * -1e9
            qc = q[:, start:stop].reshape(b * c, t, h, -1).transpose(1, 2)
            out = F.scaled_dot_product_attention(qc, k, v, attn_mask=band + off)  # (B*c, H, T, D/H)
            out = mh.o(out.transpose(1, 2).reshape(b, c, t, d))
            return out * found[:, start:stop].any(-1)[:, :, None, None].to(out.dtype)

        out = in_chunks(chunk, q_idx.numel(), b * kk * t * (2 * d + h * t), dim=1)  # (B, Q, T, D)
        return q_idx, out.transpose(1, 2)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        upd = torch.zeros_like(x)
        if cond.ligand.numel() == 0 or cond.pocket.numel() == 0:
            return upd
        for mh, q_idx, k_idx in ((self.lig_to_pocket, cond.ligand, cond.pocket),
                                 (self.pocket_to_lig, cond.pocket, cond.ligand)):
            if cond.neighbors is None:
                out = self._full(mh, x, q_idx, k_idx)
            else:
                q_idx, out = self._local(mh, x, q_idx, k_idx, cond.neighbors)
            upd = upd.index_add(2, q_idx, out.to(upd.dtype))
        return upd


class Block(nn.Module):
    """Spatial, temporal, cross-attention and MLP sub-layers, each adaLN-modulated and gated."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, max_tau: int, cross_window: int):
        super().__init__()
        self.spatial = SpatialAttention(dim, heads, dim)
        self.temporal = TemporalAttention(dim, heads, max_tau)
        self.cross = CrossAttention(dim, heads, cross_window)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.mods = nn.ModuleList(Modulation(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning, pair: torch.Tensor) -> torch.Tensor:
        h, g = self.mods[0](x, c)
        x = x + g * self.spatial(h, cond, pair)
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
        max_tokens: token budget of one pass in sampling; above it sampling denoises
            overlapping spatial fragments (:func:`hemeplm.generate.fragment.denoiser_for`). None: no limit.
        fragment_halo: Å of context around each fragment's core (blended away toward its border).
        lag_conditioned: the step conditioning also reads ``cond.lag`` (:func:`lag_embedding`).

    ``forward(x_t (B, T, N, D), t (B,), cond, mask (B, T, N)) -> (B, T, N, D)``; with ``hidden=True``
    also the last hidden states (B, T, N, dim) the output layer reads.
    """

    def __init__(self, value_dim: int, token_dim: int, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, max_tau: int = 32, cross_window: int = 2, max_tokens: int | None = None,
                 fragment_halo: float = 12.0, lag_conditioned: bool = False):
        super().__init__()
        self.dim = dim
        self.max_tokens, self.fragment_halo = max_tokens, fragment_halo
        self.value_in = nn.Linear(value_dim, dim)
        self.given = nn.Embedding(2, dim)
        self.token_in = nn.Linear(token_dim, dim)
        self.frame_pos = nn.Embedding(max_tau + 1, dim)
        self.step = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.lag = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if lag_conditioned else None
        self.pair = PairEmbedding(dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, max_tau, cross_window) for _ in range(depth))
        self.final = Modulation(dim, dim)
        self.out = nn.Linear(dim, value_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, mask: torch.Tensor,
                hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, nt, n, _ = x_t.shape
        frames = torch.arange(nt, device=x_t.device).clamp(max=self.frame_pos.num_embeddings - 1)
        x = (self.value_in(x_t) + self.given(mask.long()) + self.token_in(cond.tokens)[:, None]
             + self.frame_pos(frames)[None, :, None])
        c = self.step(timestep_embedding(t, self.dim).to(x_t.dtype))
        if self.lag is not None:
            if cond.lag is None:
                raise ValueError("this denoiser is conditioned on the lag: cond.lag must be set")
            c = c + self.lag(lag_embedding(cond.lag.expand(b), self.dim).to(x_t.dtype))
        pair = self.pair(cond, cond.neighbors).to(x_t.dtype)
        for block in self.blocks:
            x = block(x, c, cond, pair)
        h, _ = self.final(x, c)
        return (self.out(h), h) if hidden else self.out(h)
