"""The token layout: ligand groups, the atom14 round trip, values invariant to rigid motion of the input files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HEME_PDB, N_LIGAND_HEAVY, layout_tensors

from hemeplm.data import internal, tokens


def _encode_key0(feats: dict, dtype=torch.float64) -> torch.Tensor:
    """(F, N, D) internal values of the first segment with frame 0 as key."""
    x = torch.as_tensor(feats["segments"][0]).to(dtype)
    return internal.encode(x, x[0], layout_tensors(feats), {k: torch.as_tensor(v) for k, v in feats["internal"].items()})


def test_layout_holds_every_atom_once(t4l_features):
    layout = t4l_features["layout"]
    idx = layout["atom_index"][layout["atom_index"] >= 0]
    assert sorted(idx.tolist()) == list(range(t4l_features["n_atoms"]))
    lig = layout["kind"] == tokens.KIND_LIGAND
    assert lig.sum() == 1  # p-xylene's eight heavy atoms pool into one token
    assert (layout["atom_index"][lig] >= 0).sum() == N_LIGAND_HEAVY
    assert len(layout["frame_atoms"]) == 162  # T4 lysozyme residues


@pytest.fixture(scope="module")
def heme_protein():
    """19HC's protein, 18 hemes and 885 crystal waters (heavy atoms) with the hemes and waters as ligand."""
    import mdtraj

    t = mdtraj.load(str(HEME_PDB))
    keep = t.topology.select("protein or resname HEM or water")
    t = t.atom_slice(keep)
    return t.topology, t.topology.select("resname HEM or water"), t.xyz[0] * 10


def test_ligand_groups_pool_hemes_and_waters_compactly(heme_protein):
    top, ligand, xyz = heme_protein
    groups = tokens.ligand_groups(top, ligand, xyz, 14)
    assert sorted(np.concatenate(groups).tolist()) == ligand.tolist()
    assert max(map(len, groups)) <= 14
    names = [{top.atom(int(i)).residue.name for i in g} for g in groups]
    assert all(len(n) == 1 for n in names)  # a heme piece never shares a token with a water
    hemes = {}
    for g in groups:
        for i in g:
            hemes.setdefault(top.atom(int(i)).residue.index, set()).add(int(g[0]))
    heme_groups = [len(v) for r, v in hemes.items() if top.residue(r).name == "HEM"]
    assert len(heme_groups) == 18 and set(heme_groups) == {4}  # 43 atoms: 11 + 11 + 11 + 10
    waters = [g for g, n in zip(groups, names) if n == {"HOH"}]
    n_waters = len(top.select("water"))
    assert len(waters) < n_waters / 2  # pooled, not one token per water
    for g in waters:  # every pooled water lies within the group radius of the group's centre
        assert np.linalg.norm(xyz[g] - xyz[g].mean(0), axis=1).max() <= tokens.LIGAND_GROUP_RADIUS + 1e-6


def test_ligand_group_one_is_one_token_per_atom(heme_protein):
    top, ligand, xyz = heme_protein
    layout = tokens.build_layout(top, ligand, xyz, ligand_group=1)
    lig = layout.kind == tokens.KIND_LIGAND
    assert lig.sum() == len(ligand) and (layout.atom_index[lig, 1:] < 0).all()
    pooled = tokens.build_layout(top, ligand, xyz)
    assert pooled.n_tokens < layout.n_tokens - len(ligand) // 2
    np.testing.assert_array_equal(np.sort(pooled.atom_index[pooled.atom_index >= 0]), np.arange(top.n_atoms))


def test_loaded_features_invariant_to_per_frame_rigid_motion(t4l_features, t4l_moved_features):
    """Every frame moved differently in the file: superposition + token frames undo it."""
    for key in ("atom_index", "kind", "residue", "frame_atoms", "torsion_atoms"):
        np.testing.assert_array_equal(t4l_features["layout"][key], t4l_moved_features["layout"][key])
    np.testing.assert_array_equal(t4l_features["bonds"], t4l_moved_features["bonds"])
    # DCD stores float32 Å, so the two files agree to ~1e-5 Å, not bit for bit
    torch.testing.assert_close(_encode_key0(t4l_moved_features), _encode_key0(t4l_features), atol=1e-3, rtol=0)


def test_atom14_round_trip_exact(t4l_features):
    layout = layout_tensors(t4l_features)
    x = torch.as_tensor(t4l_features["segments"][0])
    slots = tokens.gather_atom14(x, layout)
    assert slots.shape == (len(x), len(layout["kind"]), 14, 3)
    assert torch.equal(slots[:, ~layout["atom_index"].ge(0)], torch.zeros_like(slots[:, ~layout["atom_index"].ge(0)]))
    assert torch.equal(tokens.scatter_atom14(slots, layout, x.shape[-2]), x)


