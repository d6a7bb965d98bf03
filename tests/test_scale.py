"""Scale: local attention is right and linear, fragmentation leaves no seam, ``hemeplm bench`` writes its report.

The fragmentation validity test uses a synthetic denoiser with a known answer
(see :class:`GaussianFieldDenoiser`): the exact posterior-mean denoiser of a
smooth random displacement field over the T4L complex's tokens. Its ε at one
token depends on every token within a few correlation lengths, as a trained
network's does within its receptive field, so a fragment that cut that context
off without blending would show as stretched bonds across fragment borders;
the test measures that with the evaluation's bond-length and clash functions
and checks that it does show when fragments are cut without halo.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PRMTOP
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hemeplm.diffusion import GaussianDiffusion
from hemeplm.generate.fragment import FragmentedDenoiser, denoiser_for, plan_fragments, slice_conditioning, token_centres
from hemeplm.models.denoiser import Conditioning, CrossAttention, SpatialAttention, VideoDenoiser


def _randomise(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised gates and output layer included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def _geometry(centres: torch.Tensor, n_ligand: int = 0) -> dict:
    """Conditioning geometry for tokens at ``centres`` (B, N, 3): identity frames, chain order, the last
    ``n_ligand`` tokens ligand groups, every position known."""
    b, n, _ = centres.shape
    seq = torch.arange(n)
    seq[n - n_ligand:] = -1
    return dict(centres=centres, frames=torch.eye(3).expand(b, n, 3, 3), seq=seq,
                known=torch.ones(b, n, dtype=torch.bool), origins=centres, body=torch.zeros(b, n, 1, 3),
                index=torch.arange(n), contacts=torch.zeros(3, 0, dtype=torch.long))


def _toy_conditioning(b: int, n: int, k: int, seed: int = 0, c: int = 8) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    nbr = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(n)]) for _ in range(b)])
    return Conditioning(tokens=torch.randn(b, n, c, generator=gen), neighbors=nbr, domain=torch.arange(n) // 7,
                        ligand=torch.arange(n - 6, n), pocket=torch.arange(3, 15),
                        **_geometry(torch.randn(b, n, 3, generator=gen) * 10, 6))


# ----------------------------------------------------------------------------- local attention

def test_local_spatial_attention_matches_reference():
    """Token i attends to exactly its K neighbours (with their pair bias) and its domain token (K + 1 keys),
    chunked or not."""
    import hemeplm.models.denoiser as den

    b, t, n, d, k = 2, 3, 40, 16, 5
    cond = _toy_conditioning(b, n, k)
    sa = _randomise(SpatialAttention(d, 4, 6))
    x = torch.randn(b, t, n, d, generator=torch.Generator().manual_seed(1))
    pair = torch.randn(b, n, k, 6, generator=torch.Generator().manual_seed(2))
    dom = sa.domains(x, cond.domain)
    ref = torch.zeros_like(x)
    for bi in range(b):
        for ti in range(t):
            for i in range(n):
                keys = torch.cat([x[bi, ti, cond.neighbors[bi, i]], dom[bi, ti, cond.domain[i]][None]])
                assert keys.shape[0] == k + 1
                bias = torch.cat([sa.bias(pair[bi, i]), torch.zeros(1, 4)]).T[None, :, None]  # (1, H, 1, K+1)
                ref[bi, ti, i] = sa.mh.attend(x[bi, ti, i][None, None], keys[None], bias)[0, 0]
    torch.testing.assert_close(sa(x, cond, pair), ref, atol=1e-5, rtol=1e-5)
    chunk = den.CHUNK_ELEMENTS
    try:
        den.CHUNK_ELEMENTS = 500  # forces several chunks
        torch.testing.assert_close(sa(x, cond, pair), ref, atol=1e-5, rtol=1e-5)
    finally:
        den.CHUNK_ELEMENTS = chunk


def test_local_cross_attention_matches_reference():
    """Local mode: a ligand (pocket) query sees the pocket (ligand) tokens among its neighbours, in frames t±τ."""
    b, t, n, d, k = 2, 4, 30, 16, 8
    cond = _toy_conditioning(b, n, k, seed=2)
    ca = _randomise(CrossAttention(d, 4, window=1))
    x = torch.randn(b, t, n, d, generator=torch.Generator().manual_seed(3))
    ref = torch.zeros_like(x)
    for mh, q_idx, k_idx in ((ca.lig_to_pocket, cond.ligand, cond.pocket),
                             (ca.pocket_to_lig, cond.pocket, cond.ligand)):
        group = set(k_idx.tolist())
        for bi in range(b):
            for ti in range(t):
                for i in q_idx.tolist():
                    pairs = [(j, tau) for tau in range(-1, 2) for j in cond.neighbors[bi, i].tolist()
                             if j in group and 0 <= ti + tau < t]
                    if not pairs:
                        continue
                    kv = torch.stack([x[bi, ti + tau, j] for j, tau in pairs])[None]
                    bias = torch.stack([ca.bias(torch.tensor(tau)) for _, tau in pairs], -1)[None, :, None]
                    ref[bi, ti, i] += mh.attend(x[bi, ti, i][None, None], kv, bias)[0, 0]
    torch.testing.assert_close(ca(x, cond), ref, atol=1e-5, rtol=1e-5)
    # a query with no partner among its neighbours gets exactly zero, and gradients stay finite
    lonely = dataclasses.replace(cond, pocket=torch.tensor([0]))
    xg = x.clone().requires_grad_(True)
    out = ca(xg, lonely)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(xg.grad).all()


class _Allocations(TorchDispatchMode):
    """Largest and total element counts of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest, self.total = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
                self.total += leaf.numel()
        return out


def _local_pass(n: int, k: int = 8) -> _Allocations:
    """Token neighbours (HemePLM's k-NN) and one denoiser pass over n tokens in local mode, counted.

    A fifth of the tokens are ligand and a third pocket, so the "ligand" grows with the system
    (as kept waters do).
    """
    from hemeplm.models.surrogate import HemePLM

    gen = torch.Generator().manual_seed(0)
    key = torch.rand(1, n, 3, generator=gen) * n ** (1 / 3) * 4.0  # ~ protein density, one atom per token
    ids = torch.arange(n)  # token i: one atom i, its own residue
    fake = SimpleNamespace(tokens=SimpleNamespace(atom_index=torch.stack([ids, torch.full((n,), -1)], 1), atom_token=ids,
                                                  residue=ids, frame_atoms=ids[:, None].expand(n, 3)),
                           local_neighbors=k, token_is_ligand=ids % 5 == 0)
    model = VideoDenoiser(6, 4, dim=16, depth=1, heads=2, mlp_ratio=1.0, max_tau=4, cross_window=1)
    counter = _Allocations()
    with torch.no_grad(), counter:
        pos, known = HemePLM.token_positions(fake, key)
        nbr = HemePLM._token_neighbors(fake, pos, known, False)
        cond = Conditioning(torch.randn(1, n, 4, generator=gen), nbr, torch.arange(n) // 24,
                            torch.arange(0, n, 5), torch.arange(1, n, 3), **_geometry(pos))
        out = model(torch.randn(1, 2, n, 6, generator=gen), torch.tensor([10]), cond, torch.zeros(1, 2, n, dtype=bool))
    assert out.shape == (1, 2, n, 6) and torch.isfinite(out).all()
    return counter


def test_ligand_group_sits_at_the_centre_of_its_known_atoms():
    """Six residue tokens on a line (x = 0, 10, ..., 50) and one ligand group of two atoms (x = 36 and 6)."""
    from hemeplm.models.surrogate import HemePLM

    ids = torch.arange(6)
    fake = SimpleNamespace(tokens=SimpleNamespace(atom_index=torch.tensor([[i, -1] for i in range(6)] + [[6, 7]]),
                                                  atom_token=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6]),
                                                  residue=torch.tensor([0, 1, 2, 3, 4, 5, 2]),
                                                  frame_atoms=ids[:, None].expand(6, 3)),
                           local_neighbors=3, token_is_ligand=torch.tensor([False] * 6 + [True]))
    key = torch.zeros(1, 8, 3)
    key[0, :, 0] = torch.tensor([0.0, 10, 20, 30, 40, 50, 36, 6])
    def neighbours(node_mask=None):
        pos, known = HemePLM.token_positions(fake, key, node_mask)
        return HemePLM._token_neighbors(fake, pos, known, node_mask is not None), pos, known

    # both atoms known: the centre (x = 21) is nearest residues 2 and 3, not those of either atom
    assert set(neighbours()[0][0, 6].tolist()) == {6, 2, 3}
    # the atom at x = 6 hidden (being inpainted): the centre of the known one (x = 36) decides
    node_mask = torch.ones(1, 8, dtype=torch.bool)
    node_mask[0, 7] = False
    assert set(neighbours(node_mask)[0][0, 6].tolist()) == {6, 4, 3}
    # the whole group hidden: it sits at its anchor residue's Cα, unknown, with that residue's neighbours
    node_mask[0, 6] = False
    nbr, pos, known = neighbours(node_mask)
    assert torch.equal(nbr[0, 6], nbr[0, 2]) and not known[0, 6] and float(pos[0, 6, 0]) == 20.0


def test_local_mode_is_linear_in_tokens():
    """No N×N tensor at 20,000 tokens; the elements allocated grow as N (4× tokens -> 4× elements)."""
    small, large = _local_pass(5_000), _local_pass(20_000)
    assert large.largest < 20_000 ** 2 / 20
    assert large.largest <= 4.4 * small.largest
    ratio = large.total / small.total
    assert 3.6 < ratio < 4.4, ratio


# ----------------------------------------------------------------------------- fragments

def test_slice_conditioning_remaps_indices():
    cond = _toy_conditioning(2, 40, 6, seed=4)
    tokens = torch.tensor([1, 2, 3, 4, 5, 8, 9, 20, 21, 22, 34, 35, 36, 37, 38, 39])
    sub = slice_conditioning(cond, tokens)
    torch.testing.assert_close(sub.tokens, cond.tokens[:, tokens])
    inside = torch.isin(cond.neighbors[:, tokens], tokens)
    torch.testing.assert_close(tokens[sub.neighbors][inside], cond.neighbors[:, tokens][inside])
    own = torch.arange(len(tokens))[None, :, None].expand_as(sub.neighbors)
    assert (sub.neighbors[~inside] == own[~inside]).all()
    assert tokens[sub.ligand].tolist() == [t for t in cond.ligand.tolist() if t in tokens.tolist()]
    assert tokens[sub.pocket].tolist() == [t for t in cond.pocket.tolist() if t in tokens.tolist()]
    dom = cond.domain[tokens]
    assert sub.domain.max() + 1 == len(dom.unique())
    assert ((sub.domain[:, None] == sub.domain[None]) == (dom[:, None] == dom[None])).all()


def test_fragment_plan_covers_every_token_once():
    gen = np.random.default_rng(0)
    centres = gen.uniform(0, 60, size=(500, 3))
    domain = np.arange(500) // 24
    site = np.arange(480, 500)
    frags = plan_fragments(centres, domain, site, max_tokens=120, halo=8.0)
    core_count = np.zeros(500, int)
    for f in frags:
        assert len(f.tokens) <= 120 and (f.tokens.diff() > 0).all()
        assert (f.weight[f.core] == 1).all() and (f.weight[~f.core] < 1).all() and (f.weight >= 0).all()
        core_count[f.tokens[f.core].numpy()] += 1
    assert (core_count == 1).all()
    # the binding site (ligand + pocket) is one core when it fits
    assert any(set(site) <= set(f.tokens[f.core].tolist()) for f in frags)


class GaussianFieldDenoiser:
    """Exact ε-prediction for a displacement field u ~ GP(0, σ² exp(-r²/2ℓ²)) over token positions.

    ``cond.tokens`` holds the token positions (B, N, 3); values are (B, T, N, 3) displacements
    (frames and components independent). The posterior mean is
    ``E[x0 | x_t] = √ᾱ Σ (ᾱ Σ + (1-ᾱ) I)⁻¹ x_t``; ε follows from it.
    """

    def __init__(self, diffusion: GaussianDiffusion, sigma: float = 0.5, length: float = 8.0):
        self.diffusion, self.sigma, self.length = diffusion, sigma, length

    def __call__(self, x_t, t, cond, mask):
        r = cond.tokens[0].double()
        cov = self.sigma ** 2 * torch.exp(-torch.cdist(r, r) ** 2 / (2 * self.length ** 2))
        a = self.diffusion.alphas_cumprod[t[0]].double()
        gain = a.sqrt() * torch.linalg.solve(a * cov + (1 - a) * torch.eye(len(r), dtype=torch.float64), cov)
        x = x_t.double()
        x0 = torch.einsum("ij,btjd->btid", gain.T, x)
        return ((x - a.sqrt() * x0) / (1 - a).sqrt()).to(x_t.dtype)


@pytest.fixture(scope="module")
def field_runs(t4l_features, t4l_dcd):
    """Displacement fields sampled whole, in blended fragments and in hard-cut fragments, as T4L frames."""
    from hemeplm.data.load import load_system
    from hemeplm.evaluate.checks import bond_lengths, clashes_per_frame
    from hemeplm.evaluate.geometry import build_geometry
    from hemeplm.models.surrogate import system_static

    static = system_static(t4l_features, 8.0, 24)
    layout = {k: torch.as_tensor(v) for k, v in t4l_features["layout"].items()}
    key = torch.as_tensor(t4l_features["segments"][0][0])
    centres = key[layout["frame_atoms"][layout["residue"], 1]]
    n = len(centres)
    ligand = torch.nonzero(layout["kind"] == 1).flatten()
    pocket = torch.as_tensor(static["pocket"])
    s, t = 2, 8
    cond = Conditioning(centres[None].expand(s, -1, -1), None, torch.as_tensor(static["domain"]), ligand, pocket,
                        **_geometry(centres[None].expand(s, -1, -1)))
    system = load_system(PRMTOP, [t4l_dcd])
    geom = build_geometry(system.topology, system.ligand, system.segments[0][0])
    ref = bond_lengths(key[None].numpy(), geom)[0]
    bond_tokens = layout["atom_token"].numpy()[geom.bonds]
    between = bond_tokens[:, 0] != bond_tokens[:, 1]  # bonds inside a token move rigidly here
    diffusion = GaussianDiffusion(1000)
    field = GaussianFieldDenoiser(diffusion)

    def run(denoise, fragments=None) -> dict:
        u = diffusion.sample(denoise, torch.zeros(s, t, n, 3), cond, torch.zeros(s, t, n, dtype=torch.bool), steps=25,
                             generator=torch.Generator().manual_seed(0))
        x = (key + u[:, :, layout["atom_token"]]).reshape(s * t, -1, 3).numpy()
        dev = np.abs(bond_lengths(x, geom) - ref)
        out = {"dev": float(dev[:, between].mean()), "clashes": clashes_per_frame(x, geom)}
        if fragments is not None:
            core = np.zeros(n, int)
            for i, f in enumerate(fragments):
                core[f.tokens[f.core].numpy()] = i
            cross = between & (core[bond_tokens[:, 0]] != core[bond_tokens[:, 1]])
            out.update(cross=float(dev[:, cross].mean()), same=float(dev[:, between & ~cross].mean()),
                       n_cross=int(cross.sum()))
        return out

    site = torch.cat([ligand, pocket]).numpy()
    runs = {"whole": run(field)}
    for name, halo in (("blended", 12.0), ("cut", 0.0)):
        frags = plan_fragments(centres.double().numpy(), static["domain"], site, max_tokens=50, halo=halo)
        runs[name] = run(FragmentedDenoiser(field, frags), frags)
        runs[name]["n_fragments"] = len(frags)
    return runs


def test_fragmented_sampling_is_as_valid_as_whole(field_runs):
    whole, blended = field_runs["whole"], field_runs["blended"]
    assert blended["n_fragments"] >= 5 and blended["n_cross"] >= 20
    assert blended["dev"] == pytest.approx(whole["dev"], rel=0.15)
    assert blended["clashes"] <= whole["clashes"] * 1.15 + 1


def test_no_seam_at_fragment_borders(field_runs):
    """Bonds between fragments are as close to their lengths as bonds inside one; a hard cut is not."""
    blended, cut = field_runs["blended"], field_runs["cut"]
    assert blended["cross"] <= 1.25 * blended["same"]
    assert cut["cross"] >= 2.0 * cut["same"]  # the measure does see a seam when there is one


def test_generator_uses_fragments_above_token_budget(t4l_features, monkeypatch):
    """A HemePLM in local mode forecasts through fragments when forced to; known frames stay exact."""
    import hemeplm.generate.fragment as fragment
    from hemeplm.config import load_config
    from hemeplm.models.surrogate import HemePLM, system_static
    from hemeplm.generate.sampler import Sampler

    cfg = load_config(None, ["encoder.hidden=16", "encoder.layers=1", "denoiser.dim=16", "denoiser.depth=1",
                             "denoiser.heads=2", "denoiser.spatial=local", "denoiser.local_neighbors=8",
                             "data.window=4", "energy.enabled=false"])
    model = HemePLM(cfg, system_static(t4l_features, 8.0, 24)).eval()
    _randomise(model.denoiser, std=0.1)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    start = torch.as_tensor(t4l_features["segments"][0][0])
    calls, original = [], FragmentedDenoiser.__call__
    monkeypatch.setattr(fragment.FragmentedDenoiser, "__call__",
                        lambda self, *a: calls.append(len(self.fragments)) or original(self, *a))
    gen = Sampler(model, diffusion, cfg, steps=3)
    whole = gen.forecast(start, 4, 1, torch.Generator().manual_seed(0))
    assert not calls
    n = model.tokens.kind.numel()
    model.denoiser.max_tokens = n // 3
    with torch.no_grad():
        frags = denoiser_for(model, model.condition(start[None])[0], start[None])
    assert isinstance(frags, FragmentedDenoiser)
    assert all(len(f.tokens) <= n // 3 for f in frags.fragments)
    torch.testing.assert_close(token_centres(model, start)[:3], start[model.tokens.frame_atoms[:3, 1]])
    pieces = gen.forecast(start, 4, 1, torch.Generator().manual_seed(0))
    assert calls and min(calls) >= 3
    assert pieces.shape == whole.shape and torch.isfinite(pieces).all()
    torch.testing.assert_close(pieces[:, 0], start[None])


# ----------------------------------------------------------------------------- hemeplm bench

def test_pocket_is_every_protein_token_near_the_ligand(t4l_features):
    """system_static's k-d tree pocket equals the brute-force definition (any atom within the radius)."""
    from hemeplm.config import load_config
    from hemeplm.models.surrogate import system_static

    cfg = load_config(None, [])
    static = system_static(t4l_features, cfg.denoiser.pocket_radius, cfg.denoiser.domain_size)
    layout, first = t4l_features["layout"], t4l_features["segments"][0][0]
    lig = first[np.nonzero(t4l_features["is_ligand"])[0]]
    idx = np.asarray(layout["atom_index"])
    d = np.sqrt(((first[idx.clip(min=0)][:, :, None] - lig[None, None]) ** 2).sum(-1)).min(-1)
    d = np.where(idx >= 0, d, np.inf).min(-1)
    brute = np.nonzero((d <= cfg.denoiser.pocket_radius) & (np.asarray(layout["kind"]) != 1))[0]
    assert len(brute) > 10
    np.testing.assert_array_equal(static["pocket"], brute)


def test_bench_smoke(tmp_path):
    """``hemeplm bench`` on the demo system with a tiny model writes bench.json (required keys) and the plot."""
    from hemeplm.cli import main

    out = tmp_path / "bench"
    main(["bench", "--out", str(out), "--systems", "t4l", "--frames", "5", "diffusion.sample_steps=2",
          "encoder.hidden=8", "encoder.layers=1", "denoiser.dim=16", "denoiser.depth=1", "denoiser.heads=2",
          "data.window=5", "optim.batch_size=1"])
    report = json.loads((out / "bench.json").read_text())
    for key in ("systems", "slope_time", "slope_memory", "machine", "settings"):
        assert key in report
    (row,) = report["systems"]
    assert "error" not in row, row.get("error")
    for key in ("name", "n_atoms", "n_atoms_input", "n_modelled", "n_tokens", "sample_s", "sample_peak_gib",
                "train_step_s", "train_peak_gib"):
        assert key in row
    assert row["n_atoms"] == 2621 and row["n_modelled"] == 1298 and row["frames"] == 5
    assert row["sample_s"] > 0 and 0 < row["sample_peak_gib"] < 24 and row["train_peak_gib"] > 0
    assert report["settings"]["spatial"] == "local"
    # without --sampler/--steps it samples as sample.py and the demo do: the config's diffusion settings
    assert {k: report["settings"][k] for k in ("sampler", "steps", "denoiser_steps")} == {
        "sampler": "ddim", "steps": 2, "denoiser_steps": 2 + 4 * 5}  # and 4 restarts of 5 steps
    assert (out / "bench.png").stat().st_size > 0


def test_trained_rates_time_and_score_the_same_samples_at_each_lag(tiny_system, tmp_path):
    """``hemeplm bench --vs-md --ckpt``: a checkpoint trained at two lags is timed at each, raw and projected, on
    its held-out MD, with the validity and torsion JSD of those very samples; the rate is the simulated span over
    the sampling time and the speed-up that over OpenMM's rate."""
    from conftest import tiny_config

    from hemeplm.cli.bench import RATE_METRICS, trained_rates
    from hemeplm.train import loop as training

    run = training.train(tiny_config(tiny_system, tmp_path, "max_steps=2", "data.lags=[2]", "data.window=4",
                                     "data.split=[0.6,0.1,0.3]"))
    rows = trained_rates(run / "ckpt.pt", tmp_path / "rates", md_ns_per_hour=0.5, log=lambda *_: None)
    assert [(r["lag_ps"], r["kind"]) for r in rows] == [(1, "raw"), (1, "projected"), (2, "raw"), (2, "projected")]
    for r in rows:
        assert r["frames"] == (12 - 1) // r["lag_ps"] + 1  # the held-out 30% of 40 frames, at the lag
        assert r["simulated_ns"] == pytest.approx((r["frames"] - 1) * r["lag_ps"] * 1e-3)
        assert r["ns_per_hour"] == pytest.approx(r["simulated_ns"] / r["wall_s"] * 3600)
        assert r["speedup"] == pytest.approx(r["ns_per_hour"] / 0.5)
        assert all(k in r for k in RATE_METRICS) and 0 <= r["bond_ok_fraction"] <= 1
        assert (tmp_path / "rates" / f"lag{r['lag_ps']:g}ps_{r['kind']}.xtc").exists()
