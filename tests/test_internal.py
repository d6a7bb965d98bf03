"""Internal coordinates: round trips on MD, exact intra-token geometry, invariance, structure terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PDB, ROOT, layout_tensors, random_rotations, write_dcd

from hemeplm.data import internal
from hemeplm.data.tokens import KIND_LIGAND, KIND_RESIDUE
from hemeplm.geometry.structure import peptide_quads, structure_terms


@pytest.fixture(scope="module")
def md():
    """The shipped demo MD (200 ps of T4L L99A + p-xylene), featurised; 60 frames as float64."""
    from hemeplm.data.dataset import DataConfig, build_features

    feats = build_features(DataConfig(topology=str(ROOT / "data/t4l_l99a_xylene/complex.prmtop"),
                                      trajectories=[str(ROOT / "data/t4l_l99a_xylene/md/traj.xtc")],
                                      ligand="resname TMP"))
    ic = {k: torch.as_tensor(v) for k, v in feats["internal"].items()}
    x = torch.as_tensor(feats["segments"][0][::3][:60]).double()
    return feats, layout_tensors(feats), ic, x


def _pairs_within_tokens(feats, layout):
    """(2, P) 1-2 and 1-3 pairs whose atoms are in one token."""
    bonds = feats["bonds"].T
    adj = {}
    for i, j in bonds:
        adj.setdefault(int(i), set()).add(int(j))
        adj.setdefault(int(j), set()).add(int(i))
    pairs = {tuple(sorted(map(int, b))) for b in bonds}
    pairs |= {tuple(sorted((a, c))) for nb in adj.values() for a in nb for c in nb if a != c}
    p = np.array(sorted(pairs)).T
    tok = layout["atom_token"].numpy()
    return torch.as_tensor(p[:, tok[p[0]] == tok[p[1]]])


def test_round_trip_on_md_frames(md):
    """Encoding MD frames and decoding them gives them back within bond-angle vibrations."""
    feats, layout, ic, x = md
    back = internal.decode(internal.encode(x, x[0], layout, ic), x[0], layout, ic, x.shape[1])
    err = (back - x).norm(dim=-1)
    torch.testing.assert_close(back[0], x[0], atol=1e-6, rtol=0)  # the key frame itself is exact
    rmsd = float(err.pow(2).mean().sqrt())
    assert rmsd < 0.5, rmsd  # measured 0.36 Å: chi lever arms carry the key's bond angles
    # a residue is placed by a least-squares fit of its N, CA, C: the fit spreads the key's N-CA-C angle
    # over the three atoms, so the peptide bond C(i)-N(i+1) between two fitted residues keeps its length
    backbone = layout["frame_atoms"]
    assert float(err[:, backbone].max()) < 0.25  # measured 0.17 Å
    q = peptide_quads(layout["torsion_atoms"][:, 2], ic["pair_index"], ic["pair_length"])
    cn = lambda c: (c[:, q[:, 1]] - c[:, q[:, 2]]).norm(dim=-1)
    assert float(((cn(back) - cn(x)).abs() < 0.1).double().mean()) > 0.97  # measured 0.99 (N-CA-C frames: 0.90)
    lig = torch.as_tensor(feats["is_ligand"])
    assert float(err[:, lig].pow(2).mean().sqrt()) < 0.15  # a rigid template, fitted


def test_random_values_keep_the_key_frames_bonds_and_angles(md):
    """Whatever the values, every 1-2 and 1-3 distance inside a token is the key frame's (template's)."""
    feats, layout, ic, x = md
    v = internal.encode(x[:4], x[0], layout, ic)
    noisy = v + torch.randn_like(v, dtype=v.dtype) * torch.tensor([0.5] * 6 + [1.0] * 10, dtype=v.dtype)
    y = internal.decode(noisy, x[0], layout, ic, x.shape[1])
    i, j = _pairs_within_tokens(feats, layout)
    protein = ~torch.as_tensor(feats["is_ligand"])[i]
    d_key = (x[0, i] - x[0, j]).norm(dim=-1)
    d_out = (y[:, i] - y[:, j]).norm(dim=-1)
    torch.testing.assert_close(d_out[:, protein], d_key[protein].expand(4, -1), atol=1e-9, rtol=0)
    # the ligand keeps its template's bonds and angles
    tmpl = torch.as_tensor(feats["segments"][0][0]).double()
    d_tmpl = (tmpl[i] - tmpl[j]).norm(dim=-1)
    torch.testing.assert_close(d_out[:, ~protein], d_tmpl[~protein].expand(4, -1), atol=1e-4, rtol=0)


def test_decoded_torsions_are_the_generated_ones(md):
    feats, layout, ic, x = md
    v = internal.encode(x[:3], x[0], layout, ic)
    target = torch.rand(3, v.shape[1], internal.N_TORSIONS, dtype=v.dtype) * 2 * np.pi - np.pi
    v[..., 6:] = torch.stack([target.sin(), target.cos()], -1).flatten(-2)
    y = internal.decode(v, x[0], layout, ic, x.shape[1])
    again = internal.encode(y, x[0], layout, ic)[..., 6:].unflatten(-1, (internal.N_TORSIONS, 2))
    present = ic["torsion_slots"][..., 0] >= 0
    measured = torch.atan2(again[..., 0], again[..., 1])
    diff = torch.remainder(measured - target + np.pi, 2 * np.pi) - np.pi
    assert float(diff[:, present].abs().max()) < 1e-8


def test_values_invariant_and_decoding_equivariant(md):
    feats, layout, ic, x = md
    rot = torch.as_tensor(random_rotations(1, np.random.default_rng(2))[0])
    y = x[:8] @ rot.T + torch.tensor([12.0, -30.0, 7.5], dtype=x.dtype)
    vx = internal.encode(x[:8], x[3], layout, ic)
    vy = internal.encode(y, y[3], layout, ic)
    torch.testing.assert_close(vy, vx, atol=1e-8, rtol=0)
    dx = internal.decode(vx, x[3], layout, ic, x.shape[1])
    torch.testing.assert_close(internal.decode(vx, y[3], layout, ic, x.shape[1]), dx @ rot.T + torch.tensor(
        [12.0, -30.0, 7.5], dtype=x.dtype), atol=1e-8, rtol=0)


def test_torsion_trees(md):
    """Residues turn their carbonyl O and chi1-4 (none for Gly, Ala, Pro); xylene is rigid."""
    feats, layout, ic, _ = md
    names = [feats["residue_names"][int(layout["atom_index"][n, 1])] for n in range(len(layout["kind"]))]
    present = (ic["torsion_slots"][..., 0] >= 0).sum(-1)
    expected = {"GLY": 1, "ALA": 1, "PRO": 1, "SER": 2, "VAL": 2, "LEU": 3, "MET": 4, "LYS": 5, "ARG": 5}
    for n, name in enumerate(names):
        if int(layout["kind"][n]) == KIND_RESIDUE and name in expected:
            assert int(present[n]) == expected[name], (n, name)
    lig = layout["kind"] == KIND_LIGAND
    assert int(present[lig].sum()) == 0 and int(ic["core"][lig].sum()) == 8


def test_ligand_torsions_move_the_smaller_side():
    """A chain ligand (butane-like, 5 atoms) gets its central torsions; the core keeps >= 3 atoms."""
    from hemeplm.data.internal import build_internal

    # residue 0: a protein stand-in with its frame atoms N, CA, C; residue 1: a 5-atom chain
    x = np.array([[0, 0, 0], [1.46, 0, 0], [2.0, 1.4, 0],
                  [5, 0, 0], [6.5, 0, 0], [7.0, 1.4, 0], [8.5, 1.4, 0.3], [9.0, 2.8, 0.6]], float)
    layout = {"atom_index": np.array([[0, 1, 2, -1, -1], [3, 4, 5, 6, 7]]), "kind": np.array([0, 1]),
              "residue": np.array([0, 0]), "frame_atoms": np.array([[0, 1, 2]]),
              "torsion_atoms": -np.ones((1, 7, 4), np.int64), "atom_token": np.array([0, 0, 0, 1, 1, 1, 1, 1])}
    bonds = np.array([[0, 1], [1, 2], [3, 4], [4, 5], [5, 6], [6, 7]]).T
    out = build_internal(layout, bonds, np.array([0, 0, 0, 1, 1, 1, 1, 1]), x[None], ["N", "C", "C"] + ["C"] * 5)
    present = out.torsion_slots[1, :, 0] >= 0
    assert present.sum() == 2  # bonds 4-5 and 5-6
    assert out.core[1].sum() >= 3
    moved = out.torsion_moving[1][present]
    assert (moved.sum(-1) == 1).all()  # each turns one terminal atom, the smaller side


def test_structure_terms_zero_on_md_and_grow_with_noise(md):
    feats, layout, ic, x = md
    clean = structure_terms(x[None, :20].float(), ic)
    assert float(clean["bond"]) < 0.01 and float(clean["clash"]) < 0.05
    previous = clean
    for scale in (0.1, 0.3, 0.6):
        noisy = x[None, :20] + torch.randn_like(x[None, :20]) * scale
        terms = structure_terms(noisy.float(), ic)
        assert float(terms["bond"]) > float(previous["bond"]) and float(terms["clash"]) > float(previous["clash"])
        previous = terms


def test_projection_repairs_perturbed_frames_and_keeps_tokens_exact(md):
    """Noisy rigid bodies (broken peptide bonds, clashes) projected: the inter-token bond error drops >10x and
    the clash penalty >3x, bonds inside tokens stay the key frame's, and tokens that are not free do not move."""
    from hemeplm.geometry.structure import project

    feats, layout, ic, x = md
    key = x[0].float()
    scale = torch.tensor([0.05] * 3 + [0.3] * 3 + [1.0] * 10)  # values normalised as the model's are
    v = internal.encode(x[None, :4].float(), key[None], layout, ic) / scale
    noisy = v + torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0] * 6 + [0.0] * 10)
    noisy[:, 0] = v[:, 0]  # the key frame is given
    free = torch.ones(noisy.shape[:-1], dtype=torch.bool)
    free[:, 0] = False

    def coordinates(values):
        return internal.decode(values * scale, key[None], layout, ic, x.shape[1])

    before = structure_terms(coordinates(noisy), ic)
    out = project(coordinates, noisy, free, ic, steps=100)[0]
    after = structure_terms(coordinates(out), ic)
    assert float(after["bond"]) < float(before["bond"]) / 10, (before, after)
    assert float(after["clash"]) < float(before["clash"]) / 3, (before, after)
    assert torch.equal(out[:, 0], noisy[:, 0])
    i, j = _pairs_within_tokens(feats, layout)
    y = coordinates(out)
    protein = ~torch.as_tensor(feats["is_ligand"])[i]
    d = (y[..., i, :] - y[..., j, :]).norm(dim=-1)[..., protein]
    torch.testing.assert_close(d, (key[i] - key[j]).norm(dim=-1)[protein].expand_as(d), atol=1e-4, rtol=0)


def test_projection_stops_once_nothing_it_can_mend_is_broken(md):
    """With the atoms' tokens the projection stops as soon as no pair with a free atom clashes and every inter-token
    bond and 1-3 distance is within tolerance: MD frames (decoded from their values, so each token is rigid) and
    noisy ones stop before the limit with none of those violations left, and violations in a given frame (which
    nothing can mend) do not keep it going. Only frames holding a free token are decoded."""
    from hemeplm.geometry.structure import (CLASH_SCALE, PROJECT_ANGLE_TOLERANCE_A, bond_deviation, clash_penalty,
                                            project)

    feats, layout, ic, x = md
    key = x[0].float()
    scale = torch.tensor([0.05] * 3 + [0.3] * 3 + [1.0] * 10)
    v = internal.encode(x[None, :4].float(), key[None], layout, ic) / scale
    decoded = []

    def coordinates(values):
        decoded.append(values.shape[1])
        return internal.decode(values * scale, key[None], layout, ic, x.shape[1])

    free = torch.ones(v.shape[:-1], dtype=torch.bool)
    free[:, 0] = False
    token = torch.as_tensor(feats["layout"]["atom_token"])
    rigid = torch.tensor([1.0] * 6 + [0.0] * 10)
    noisy = v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) * rigid
    noisy[:, 0] = v[:, 0]
    steps = {}
    for name, values in (("md", v), ("noisy", noisy)):
        mended, steps[name] = project(coordinates, values, free, ic, steps=100, atom_token=token)
        y = internal.decode(mended * scale, key[None], layout, ic, x.shape[1])[:, 1:]
        assert float(bond_deviation(y, ic).max()) <= PROJECT_ANGLE_TOLERANCE_A ** 2 + 1e-6
        assert float(clash_penalty(y, ic, CLASH_SCALE).sum()) == 0.0
    assert 0 < steps["md"] < steps["noisy"] < 100, steps
    assert set(decoded) == {3}  # the given key frame is never decoded
    broken = noisy.clone()
    broken[:, 0] = noisy[:, 1]  # a given frame full of violations: nothing may move there
    assert project(coordinates, broken, free, ic, steps=100, atom_token=token)[1] == steps["noisy"]
    assert project(coordinates, noisy, free, ic, steps=100)[1] == 100  # without the tokens: every step


def test_residue_missing_side_chain_atoms_is_logged_and_held(tmp_path, caplog):
    """A Lys without NZ: chi4 is not generated (a clear log line), and decoding still keeps every bond exact."""
    import logging

    import mdtraj

    from hemeplm.data.dataset import DataConfig, build_features

    full = mdtraj.load(str(PDB))
    lys = [r for r in full.topology.residues if r.name == "LYS"][0]
    keep = [a.index for a in full.topology.atoms
            if (a.residue.is_protein or a.residue.name == "TMP") and not (a.residue is lys and a.name in ("NZ", "HZ1",
                                                                                                     "HZ2", "HZ3"))]
    sub = full.atom_slice(keep)
    for a in sub.topology.atoms:
        a.serial = None
    sub.save_pdb(str(tmp_path / "cut.pdb"))
    xyz = sub.xyz[0][None] + np.random.default_rng(0).normal(scale=0.01, size=(4, *sub.xyz[0].shape))
    write_dcd(tmp_path / "cut.dcd", xyz)
    with caplog.at_level(logging.WARNING):
        feats = build_features(DataConfig(topology=str(tmp_path / "cut.pdb"), trajectories=[str(tmp_path / "cut.dcd")],
                                          ligand="resname TMP"))
    assert any(f"{lys}" in r.message and "chi4" in r.message for r in caplog.records)
    layout = layout_tensors(feats)
    ic = {k: torch.as_tensor(v) for k, v in feats["internal"].items()}
    token = int(layout["atom_token"][int(layout["frame_atoms"][lys.index, 1])])
    assert int((ic["torsion_slots"][token, :, 0] >= 0).sum()) == 4  # carbonyl + chi1-3
    x = torch.as_tensor(feats["segments"][0]).double()
    v = internal.encode(x, x[0], layout, ic)
    y = internal.decode(v + 0.2 * torch.randn_like(v), x[0], layout, ic, x.shape[1])
    i, j = _pairs_within_tokens(feats, layout)
    protein = ~torch.as_tensor(feats["is_ligand"])[i]
    d = (y[:, i] - y[:, j]).norm(dim=-1)[:, protein]
    torch.testing.assert_close(d, (x[0, i] - x[0, j]).norm(dim=-1)[protein].expand_as(d), atol=1e-9, rtol=0)


def test_fold_restraint_holds_a_drifting_frame(md):
    """Cα pairs within 10 Å and their training spread; the fold penalty is zero at the reference, grows with
    drift, and a projection with the fold reference removes most of it while keeping tokens exact."""
    from hemeplm.geometry.structure import fold_penalty, project

    feats, layout, ic, x = md
    assert ic["fold_index"].shape[1] > 500 and float(ic["fold_spread"].min()) >= 0.1
    key = x[0].float()
    assert float(fold_penalty(key[None, None], key, ic, 3.0).sum()) == 0.0
    scale = torch.tensor([0.05] * 3 + [0.3] * 3 + [1.0] * 10)
    v = internal.encode(x[None, :3].float(), key[None], layout, ic) / scale
    drift = v.clone()
    drift[:, 1:, :, 3:6] += 4.0 * torch.randn(drift[:, 1:, :, 3:6].shape, generator=torch.Generator().manual_seed(1))

    def coordinates(values):
        return internal.decode(values * scale, key[None], layout, ic, x.shape[1])

    free = torch.ones(drift.shape[:-1], dtype=torch.bool)
    free[:, 0] = False
    before = float(fold_penalty(coordinates(drift), key, ic, 3.0).sum())
    plain = float(fold_penalty(coordinates(project(coordinates, drift, free, ic, steps=60)[0]), key, ic, 3.0).sum())
    held = project(coordinates, drift, free, ic, steps=60, fold=key, fold_sigmas=3.0)[0]
    held = float(fold_penalty(coordinates(held), key, ic, 3.0).sum())
    assert held < before / 10 and held < plain / 3, (before, plain, held)
