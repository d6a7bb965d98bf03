"""Fragmentation: denoise a system too large for one pass as overlapping spatial fragments.

A fragment is a *core* of tokens plus a *halo* of the tokens within ``halo`` Å of
the core (token position: the Cα of the token's residue, or of a ligand
token's anchor residue, in the key frame). Cores partition the tokens:

* the binding site (ligand tokens and pocket residues) is one core, so the
  protein–ligand interaction is denoised in one piece when it fits;
* the other tokens are grouped by domain (contiguous residue chunks,
  ``cond.domain``), consecutive domains merged while they fit;
* a group larger than a core (a big site, a domain full of kept waters) is
  split by recursive coordinate bisection.

At every diffusion step each fragment is denoised on its own tokens (the
conditioning sliced and its indices remapped, neighbours outside the fragment
replaced by the token itself) and the ε predictions of the fragments are
averaged per token with weights that are 1 in the fragment's core and fall
smoothly to 0 at the halo's outer edge, where a fragment's context is cut.
A token near a border between two cores is thus a blend of both fragments'
views and no seam shows; a token deep in a core is its own fragment's.

``FragmentedDenoiser`` has the denoiser interface ``denoiser(x_t, t, cond,
mask)`` of :mod:`hemeplm.diffusion`; :func:`denoiser_for` returns it when the
system has more tokens than the model's ``denoiser.max_tokens`` budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hemeplm.data.tokens import bisect
from hemeplm.models.denoiser import Conditioning


@dataclass
class Fragment:
    """One fragment.

    Attributes:
        tokens: (S,) int64 sorted global indices of its tokens (core and halo).
        weight: (S,) float blend weight: 1 in the core, falling to 0 at the halo's edge.
        core: (S,) bool, True for core tokens.
    """

    tokens: torch.Tensor
    weight: torch.Tensor
    core: torch.Tensor

    def to(self, device) -> "Fragment":
        return Fragment(self.tokens.to(device), self.weight.to(device), self.core.to(device))


def plan_cores(centres: np.ndarray, domain: np.ndarray, site: np.ndarray, size: int) -> list[np.ndarray]:
    """Partition tokens into spatially compact cores of at most ``size`` tokens.

    Args:
        centres: (N, 3) token positions; domain: (N,) domain ids; site: (L+P,) ligand and pocket tokens.
    Returns:
        sorted index arrays, every token in exactly one.
    """
    cores = bisect(np.unique(site), centres, size) if len(site) else []
    rest = np.setdiff1d(np.arange(len(centres)), site)
    rest = rest[np.argsort(domain[rest], kind="stable")]
    starts = np.unique(domain[rest], return_index=True)[1]
    group: list[np.ndarray] = []
    for members in np.split(rest, starts[1:]) if len(rest) else []:
        if group and sum(map(len, group)) + len(members) > size:
            cores += bisect(np.concatenate(group), centres, size)
            group = []
        group.append(members)
    if group:
        cores += bisect(np.concatenate(group), centres, size)
    return [np.sort(c) for c in cores]


def plan_fragments(centres: np.ndarray, domain: np.ndarray, site: np.ndarray, max_tokens: int,
                   halo: float) -> list[Fragment]:
    """Overlapping fragments of at most ``max_tokens`` tokens covering every token.

    Cores hold at most ``max_tokens // 2`` tokens; each gets as halo the tokens within ``halo``
    Å of it, the nearest first while they fit. A halo token at distance r from its core weighs
    ``(1 - r / edge)²``, ``edge`` being ``halo`` or, when the halo was cut short, the distance
    of the first token left out.

    Args:
        centres: (N, 3) token positions in Å; domain: (N,); site: ligand and pocket token indices.
    """
    from scipy.spatial import cKDTree

    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    tree = cKDTree(centres)
    fragments = []
    for core in plan_cores(centres, domain, site, max_tokens // 2):
        ring = np.zeros(0, dtype=np.int64)
        if halo > 0:
            near = tree.query_ball_point(centres[core], r=halo, return_sorted=False)
            ring = np.setdiff1d(np.concatenate(near).astype(np.int64), core)
        dist = cKDTree(centres[core]).query(centres[ring])[0] if len(ring) else np.zeros(0)
        order = np.argsort(dist, kind="stable")
        ring, dist = ring[order], dist[order]
        room, edge = max_tokens - len(core), halo
        if len(ring) > room:
            edge = dist[room]
            ring, dist = ring[:room], dist[:room]
        tokens = np.concatenate([core, ring])
        weight = np.concatenate([np.ones(len(core)), np.clip(1 - dist / max(edge, 1e-9), 0, 1) ** 2])
        order = np.argsort(tokens)
        fragments.append(Fragment(tokens=torch.as_tensor(tokens[order]),
                                  weight=torch.as_tensor(weight[order], dtype=torch.float32),
                                  core=torch.as_tensor(order < len(core))))
    return fragments


def slice_conditioning(cond: Conditioning, tokens: torch.Tensor) -> Conditioning:
    """The conditioning of the sub-system ``tokens`` (sorted global indices), indices remapped to it.

    Neighbours outside the sub-system are replaced by the token itself; domains are renumbered
    0..M'-1 in order; ligand and pocket keep their members inside.
    """
    n = cond.tokens.shape[1]
    pos = torch.full((n,), -1, dtype=torch.long, device=tokens.device)
    pos[tokens] = torch.arange(tokens.numel(), device=tokens.device)
    neighbors = None
    if cond.neighbors is not None:
        local = pos[cond.neighbors[:, tokens]]
        own = torch.arange(tokens.numel(), device=tokens.device)[None, :, None]
        neighbors = torch.where(local >= 0, local, own)
    domain = torch.unique(cond.domain[tokens], return_inverse=True)[1]
    ligand, pocket = pos[cond.ligand], pos[cond.pocket]
    return Conditioning(neighbors=neighbors, domain=domain, ligand=ligand[ligand >= 0], pocket=pocket[pocket >= 0],
                        **cond.select(tokens))


class FragmentedDenoiser:
    """``denoiser(x_t, t, cond, mask)`` run fragment by fragment, ε blended over the overlaps.

    Args:
        denoise: the whole-system denoiser (e.g. ``HemePLM.denoise``).
        fragments: from :func:`plan_fragments`; every token must be in some core.
    """

    def __init__(self, denoise, fragments: list[Fragment]):
        self.denoise, self.fragments = denoise, fragments
        self._cond: Conditioning | None = None
        self._parts: list[Conditioning] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, mask: torch.Tensor) -> torch.Tensor:
        if cond is not self._cond:
            self._cond = cond
            self.fragments = [f.to(x_t.device) for f in self.fragments]
            self._parts = [slice_conditioning(cond, f.tokens) for f in self.fragments]
            self._total = x_t.new_zeros(x_t.shape[2])  # blend weight per token, the same at every step
            for frag in self.fragments:
                self._total.index_add_(0, frag.tokens, frag.weight.to(x_t.dtype))
        out = torch.zeros_like(x_t)
        for frag, sub in zip(self.fragments, self._parts):
            eps = self.denoise(x_t[:, :, frag.tokens], t, sub, mask[:, :, frag.tokens])
            out.index_add_(2, frag.tokens, eps.to(x_t.dtype) * frag.weight.to(x_t.dtype)[:, None])
        return out / self._total[:, None]


def token_centres(model, key: torch.Tensor) -> torch.Tensor:
    """(A, 3) key frame -> (N, 3) position of every token: its residue's Cα (a ligand token's anchor residue)."""
    return key[model.tokens.frame_atoms[model.tokens.residue, 1]]


def denoiser_for(model, cond: Conditioning, key: torch.Tensor):
    """The denoiser sampling should use: ``model.denoise``, or fragments of it when the
    system has more tokens than ``model.denoiser.max_tokens``.

    Fragments are planned on the first sample's key frame (``key`` (B, A, 3)).
    """
    budget = model.denoiser.max_tokens
    if budget is None or cond.tokens.shape[1] <= budget:
        return model.denoise
    site = torch.cat([cond.ligand, cond.pocket]).cpu().numpy()
    fragments = plan_fragments(token_centres(model, key[0]).detach().cpu().double().numpy(),
                               cond.domain.cpu().numpy(), site, budget, model.denoiser.fragment_halo)
    return FragmentedDenoiser(model.denoise, fragments)
