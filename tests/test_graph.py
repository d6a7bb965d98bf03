"""Protein–ligand graph of the T4L–xylene complex: covalent, spatial, H-bond and cross edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_rotations

from hemeplm.models.graph import EDGE_COVALENT, EDGE_HBOND, HBOND_CUTOFF, build_graph, neighbor_pairs

CUTOFF = 5.0


def _inputs(feats: dict) -> dict:
    return {k: torch.as_tensor(feats[k]) for k in ("bonds", "is_ligand", "polar", "residue")}


def _graph(feats: dict, pos: torch.Tensor, **kw):
    return build_graph(pos, **_inputs(feats), cutoff=CUTOFF, **kw)


def _edges(g) -> dict[tuple[int, int], tuple[int, bool]]:
    """(src, dst) -> (edge type, cross)."""
    return {(int(s), int(d)): (int(t), bool(c)) for (s, d), t, c in zip(g.edge_index.T, g.edge_type, g.cross)}


@pytest.fixture(scope="module")
def pos(t4l_features) -> torch.Tensor:
    return torch.as_tensor(t4l_features["segments"][0][0]).double()


@pytest.mark.parametrize("max_neighbors", [32, 6])
def test_edges(t4l_features, pos, max_neighbors):
    g = _graph(t4l_features, pos, max_neighbors=max_neighbors)
    edges = _edges(g)
    src, dst = g.edge_index
    assert len(edges) == g.edge_index.shape[1] and bool((src != dst).all())
    # covalent edges: exactly the topology bonds, both directions
    bonds = {(int(a), int(b)) for a, b in t4l_features["bonds"].T}
    cov = {e for e, (t, _) in edges.items() if t == EDGE_COVALENT}
    assert cov == bonds | {(b, a) for a, b in bonds}
    # symmetric, with the same type both ways
    assert all(edges.get((d, s)) == v for (s, d), v in edges.items())
    # spatial edges: within the cutoff, at most max_neighbors per atom
    d = (pos[src] - pos[dst]).norm(dim=-1)
    spatial = g.edge_type != EDGE_COVALENT
    assert bool((d[spatial] <= CUTOFF).all())
    assert int(torch.bincount(src[spatial], minlength=len(pos)).max()) <= max_neighbors
    pairs = neighbor_pairs(pos, CUTOFF, max_neighbors)
    assert int(torch.bincount(pairs[0], minlength=len(pos)).max()) <= max_neighbors
    # H-bond edges join N/O of different residues within 3.5 Å
    hb = g.edge_type == EDGE_HBOND
    polar, residue = torch.as_tensor(t4l_features["polar"]), torch.as_tensor(t4l_features["residue"])
    assert hb.any() and bool((polar[src[hb]] & polar[dst[hb]] & (residue[src[hb]] != residue[dst[hb]])).all())
    assert bool((d[hb] <= HBOND_CUTOFF).all())
    # cross edges: exactly those between a protein and a ligand atom; xylene sits in the pocket
    lig = torch.as_tensor(t4l_features["is_ligand"])
    assert torch.equal(g.cross, lig[src] != lig[dst])
    assert g.cross.any()
    bip = g.bipartite()
    assert bool((lig[bip.edge_index[0]] != lig[bip.edge_index[1]]).all())


def test_full_cap_keeps_all_pairs_in_cutoff(t4l_features, pos):
    """With a cap above any atom's count of neighbours, every pair within the cutoff is an edge."""
    pairs = neighbor_pairs(pos, CUTOFF, max_neighbors=200)
    dist = torch.cdist(pos, pos)
    want = {(i, j) for i, j in (dist <= CUTOFF).nonzero().tolist() if i != j}
    assert set(map(tuple, pairs.T.tolist())) == want


def test_rotation_invariant(t4l_features, pos):
    rot = torch.as_tensor(random_rotations(1, np.random.default_rng(4))[0])
    moved = pos @ rot.T + torch.tensor([30.0, -4.0, 11.0], dtype=pos.dtype)
    for k in (32, 6):
        before = _edges(_graph(t4l_features, pos, max_neighbors=k))
        assert _edges(_graph(t4l_features, moved, max_neighbors=k)) == before


def test_same_graph_from_moved_trajectory_file(t4l_features, t4l_moved_features):
    """The key frames of a per-frame rotated file give the same graph, but for pairs within float32
    round-off of the cutoff."""
    graphs, key = [], []
    for feats in (t4l_features, t4l_moved_features):
        x = torch.as_tensor(feats["segments"][0][0]).double()
        graphs.append(_edges(_graph(feats, x, max_neighbors=32)))
        key.append(x)
    diff = set(graphs[0].items()) ^ set(graphs[1].items())
    for (s, d), _ in diff:
        assert abs(float((key[0][s] - key[0][d]).norm()) - CUTOFF) < 1e-3
    assert len(diff) <= 4


def test_batch_and_mask(t4l_features, pos):
    n = len(pos)
    inputs = _inputs(t4l_features)
    batch = torch.arange(2).repeat_interleave(n)
    both = torch.cat([pos, pos])  # two copies on top of each other: only `batch` keeps them apart
    bonds = torch.cat([inputs["bonds"], inputs["bonds"] + n], dim=1)
    rep = {k: torch.cat([inputs[k], inputs[k]]) for k in ("is_ligand", "polar", "residue")}
    mask = torch.ones(2 * n, dtype=torch.bool)
    mask[n + 5] = False
    g = build_graph(both, bonds, rep["is_ligand"], rep["polar"], rep["residue"], cutoff=CUTOFF, max_neighbors=32,
                    batch=batch, node_mask=mask)
    src, dst = g.edge_index
    assert torch.equal(batch[src], batch[dst])
    assert not ((src == n + 5) | (dst == n + 5)).any()
    single = _edges(_graph(t4l_features, pos, max_neighbors=32))
    first = {e: v for e, v in _edges(g).items() if e[0] < n}
    assert first == single
