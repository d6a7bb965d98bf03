"""HemePLM on a tiny system: SE(3) invariance, given entries in every task, and learning one window."""

from __future__ import annotations

import copy
import dataclasses

from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import random_rotations, tiny_config

from hemeplm.config import Config
from hemeplm.errors import HemeplmError
from hemeplm.data.dataset import WindowDataset
from hemeplm.data.ligand import ELEMENTS, N_LIGAND_FEATURES
from hemeplm.data.residues import N_RES_TYPES
from hemeplm.diffusion import GaussianDiffusion
from hemeplm.data.internal import anchors, posed_body
from hemeplm.geometry.rigid import mean_structure, rotvec_to_matrix, superpose_onto
from hemeplm.geometry.structure import (PEPTIDE_ANGLES, PROJECT_ANGLE_SIGMAS, bond_deviation, peptide_geometry,
                                        peptide_penalty, peptide_quads, project)
from hemeplm.models.encoder import AtomEncoder, ViSLayer, edge_geometry, rejected_dot
from hemeplm.models.refine import FEATURE_UNITS, N_FEATURES
from hemeplm.models.surrogate import HemePLM
from hemeplm.generate.sampler import Sampler
from hemeplm.tasks import TASKS, task_mask
from hemeplm.train.loop import build


class Tiny(NamedTuple):
    model: HemePLM
    diffusion: GaussianDiffusion
    cfg: Config
    windows: WindowDataset

    def generator(self, steps: int = 5) -> Sampler:
        return Sampler(self.model, self.diffusion, self.cfg, steps=steps)


def random_rotation(seed: int) -> torch.Tensor:
    return torch.from_numpy(random_rotations(1, np.random.default_rng(seed))[0]).float()


def moved(x: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x @ rot.T + shift


def built(system, out, *overrides) -> Tiny:
    """An untrained model with every weight perturbed (none of its layers is zero), on the tiny system."""
    cfg = tiny_config(system, out, *overrides)
    torch.manual_seed(0)
    _, train_ds, _, _, _, model, diffusion = build(cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return Tiny(model.eval(), diffusion, cfg, train_ds)


@pytest.fixture(scope="module")
def models(tiny_system, tmp_path_factory) -> dict[str, Tiny]:
    """Tiny models with full and with local (nearest tokens + domains) spatial attention."""
    return {spatial: built(tiny_system, tmp_path_factory.mktemp("model"), f"denoiser.spatial={spatial}",
                           "denoiser.local_neighbors=4", "denoiser.domain_size=3") for spatial in ("full", "local")}


@pytest.fixture
def tiny(models) -> Tiny:
    return models["full"]


@pytest.fixture(params=["full", "local"])
def any_tiny(request, models) -> Tiny:
    return models[request.param]


# ----------------------------------------------------------------------------- invariance
def test_encoder_scalars_invariant_vectors_rotate(tiny):
    from e3nn import o3

    model = tiny.model
    enc = AtomEncoder(len(ELEMENTS) + 1, (N_RES_TYPES + 1) * model.width + 1, N_LIGAND_FEATURES, hidden=16,
                      layers=2, lmax=2, num_rbf=8, cutoff=5.0, max_neighbors=10)
    key = tiny.windows[0]["coords"][:2]  # two frames as a batch
    rot, shift = random_rotation(1), torch.tensor([3.0, -7.0, 11.0])
    h, vec = enc(key, model.static)
    h_r, vec_r = enc(moved(key, rot, shift), model.static)
    assert vec.shape[2] == 8  # l = 1 (3) and l = 2 (5)
    assert vec[:, :, :3].abs().max() > 0.1 and vec[:, :, 3:].abs().max() > 0.1
    torch.testing.assert_close(h_r, h, atol=1e-4, rtol=1e-4)
    d1 = o3.Irreps("1o").D_from_matrix(rot)
    d2 = o3.Irreps("2e").D_from_matrix(rot)
    torch.testing.assert_close(d1, rot, atol=1e-5, rtol=0)  # the l = 1 part is a Cartesian vector
    torch.testing.assert_close(vec_r[:, :, :3], torch.einsum("ij,bajc->baic", d1, vec[:, :, :3]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vec_r[:, :, 3:], torch.einsum("ij,bajc->baic", d2, vec[:, :, 3:]), atol=1e-4, rtol=1e-4)
    # a translation alone changes nothing
    h_t, vec_t = enc(key + shift, model.static)
    torch.testing.assert_close(h_t, h, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vec_t, vec, atol=1e-4, rtol=1e-4)


def test_rejected_dot_is_the_dot_product_of_the_rejected_vectors():
    """a·b − (a·u)(b·u) equals the dot product of a and b with their components along the unit u removed (the
    edge update's dihedral reading), for any u and both directions of it."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    u = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)

    def rejected(v, w):
        return v - w[:, :, None] * torch.einsum("esc,es->ec", v, w)[:, None, :]

    explicit = (rejected(a, u) * rejected(b, -u)).sum(1)
    torch.testing.assert_close(rejected_dot(a, b, u), explicit)
    assert float(explicit.abs().min()) > 0 and not torch.allclose(explicit, (a * b).sum(1))


def test_first_layer_without_vectors_equals_zero_vectors():
    """A layer given no vectors (``vec`` None: the first layer, which skips the terms that read them) returns
    what it returns for zero vectors, its edge update included; from the second layer on the vectors count."""
    g = torch.Generator().manual_seed(0)
    layer = ViSLayer(8, heads=2, update_edges=True).double()
    for p in layer.parameters():  # away from the default initialisation, so that every term is non-zero
        p.data.normal_(0, 0.5, generator=g)
    pos = torch.randn(6, 3, generator=g, dtype=torch.float64) * 2
    ei = torch.tensor([(i, j) for i in range(6) for j in range(6) if i != j]).T
    d, rhat, sh, cut = edge_geometry(pos, ei, 10.0, 2)
    h = torch.randn(6, 8, generator=g, dtype=torch.float64)
    f = torch.randn(ei.shape[1], 8, generator=g, dtype=torch.float64)
    skipped = layer(h, None, f, sh, cut, rhat, ei)
    zeros = layer(h, torch.zeros(6, sh.shape[1], 8, dtype=torch.float64), f, sh, cut, rhat, ei)
    for a, b in zip(skipped, zeros):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    again = layer(*skipped, sh, cut, rhat, ei)
    assert not torch.allclose(again[2], skipped[2])  # given vectors, the edges are updated
    # a last layer whose vectors nothing reads (update_vectors False) gives the same scalars and edges
    last = ViSLayer(8, heads=2, update_edges=True, update_vectors=False).double()
    last.load_state_dict(layer.state_dict())
    for given in (None, skipped[1]):
        full, cut_short = layer(h, given, f, sh, cut, rhat, ei), last(h, given, f, sh, cut, rhat, ei)
        torch.testing.assert_close(cut_short[0], full[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cut_short[2], full[2], rtol=1e-12, atol=1e-12)
        assert cut_short[1] is given


def test_encoder_ignores_masked_positions(tiny):
    model = tiny.model
    key = tiny.windows[0]["coords"][:1]
    known = ~model.atoms.is_ligand[None]
    h, vec = model.encoder(key, model.static, known)
    elsewhere = key.clone()
    scatter = torch.randn(int((~known).sum()), 3, generator=torch.Generator().manual_seed(0))
    elsewhere[:, ~known[0]] = key[0, 0] + 5 * scatter
    h2, vec2 = model.encoder(elsewhere, model.static, known)
    assert torch.equal(h, h2) and torch.equal(vec, vec2)


def test_mean_structure_of_moved_noisy_copies_is_the_structure():
    gen = torch.Generator().manual_seed(0)
    shape = 6 * torch.randn(20, 3, generator=gen, dtype=torch.float64)
    rots = torch.from_numpy(random_rotations(30, np.random.default_rng(1)))
    copies = shape @ rots.transpose(-1, -2) + 10 * torch.randn(30, 1, 3, generator=gen, dtype=torch.float64)
    noisy = copies + 0.3 * torch.randn(copies.shape, generator=gen, dtype=torch.float64)
    mean = mean_structure(noisy, torch.ones(20, dtype=torch.float64))
    rmsd = lambda a, b: float((a - b).pow(2).sum(-1).mean().sqrt())  # noqa: E731
    assert rmsd(superpose_onto(mean, shape, torch.ones(20)), shape) < 0.1  # the noise of one copy: 0.52 Å
    assert rmsd(superpose_onto(noisy[0], shape, torch.ones(20)), shape) > 0.4


def test_ensemble_offset_is_invariant_and_reads_the_mean_along_each_tokens_axes(tiny):
    """The key frame's offset from the training mean structure does not change when the key moves rigidly; it is
    zero at the mean, reads a token's displacement along its own axes, and for a hidden ligand (placed at its anchor
    residue) points to where the mean has it."""
    model = copy.deepcopy(tiny.model)
    key = tiny.windows[0]["coords"][:1]

    def offset(frame, node_mask=None):
        centres, known = model.token_positions(frame, node_mask)
        return model.ensemble_offset(centres, known, anchors(frame, model.layout)[0])

    rot, shift = random_rotation(3), torch.tensor([5.0, -7.0, 2.0])
    assert offset(key)[..., 3].abs().max() > 0.05  # the fitted mean is not this frame
    torch.testing.assert_close(offset(moved(key, rot, shift)), offset(key), atol=1e-5, rtol=0)
    centres = model.token_positions(key)[0][0]
    model.ensemble_mean.copy_(moved(centres, rot, shift))
    assert offset(key).abs().max() < 1e-4
    token, step = 3, torch.tensor([0.0, 0.8, 0.0])
    model.ensemble_mean[token] += step @ rot.T
    axes = anchors(key, model.layout)[0][0, token]
    along = 2 * offset(key)[0, token, :3]  # back in Å
    seen = axes @ along  # the superposition of this 12-residue system on its tokens takes a little of the step
    assert torch.cosine_similarity(seen, step, dim=0) > 0.95 and 0.6 < float(seen.norm()) <= 0.8
    model.ensemble_mean.copy_(moved(centres, rot, shift))
    hidden = ~model.atoms.is_ligand[None]
    lig = torch.nonzero(model.token_is_ligand).flatten()
    placed = model.token_positions(key, hidden)[0][0, lig]
    where = torch.einsum("nij,nj->ni", anchors(key, model.layout)[0][0, lig], 2 * offset(key, hidden)[0, lig, :3])
    torch.testing.assert_close(placed + where, centres[lig], atol=1e-4, rtol=0)


@pytest.mark.parametrize("task", TASKS)
def test_window_sample_is_equivariant(any_tiny, task):
    """Rotating and translating the given frames rotates the generated frames; the values d do not change, with
    Restart sampling (the default) as without."""
    model = any_tiny.model
    gen = any_tiny.generator()
    raw = dataclasses.replace(gen, project_steps=0, restart=0)
    coords = any_tiny.windows[0]["coords"][None].repeat(2, 1, 1, 1)  # two samples
    mask = task_mask(task, coords.shape[1], model.token_is_ligand, upsample_factor=2)
    rot, shift = random_rotation(2), torch.tensor([-12.0, 4.0, 9.0])
    out = gen.window_sample(coords, mask, torch.Generator().manual_seed(5))
    out_r = gen.window_sample(moved(coords, rot, shift), mask, torch.Generator().manual_seed(5))
    generated = ~mask[:, model.tokens.atom_token]  # (T, A)
    assert (out - coords)[:, generated].abs().max() > 0.05  # something was generated
    assert (out[0] - out[1]).abs().max() > 0.05  # independent samples
    # the network's own output, unprojected and without restarts: float32 rounding only
    raw_out = raw.window_sample(coords, mask, torch.Generator().manual_seed(5))
    raw_r = raw.window_sample(moved(coords, rot, shift), mask, torch.Generator().manual_seed(5))
    torch.testing.assert_close(raw_r, moved(raw_out, rot, shift), atol=1e-3 + 1e-5 * float(raw_out.abs().max()),
                               rtol=0)
    # the projection (50 Adam steps on float32 coordinates, clash pairs switching on and off) lets that rounding
    # grow to a tenth of an Å, and send a few atoms of this untrained model's wild output along another path
    apart = (out_r - moved(out, rot, shift)).norm(dim=-1)
    assert float(apart.median()) < 1e-3 and float((apart > 0.15).float().mean()) < 0.05
    values = model.values(raw_out, raw_out[:, 0])
    values_r = model.values(raw_r, raw_r[:, 0])
    # 8 refinement rounds of this random refiner compound float32 rounding in the values to a few 1e-4
    torch.testing.assert_close(values_r, values, atol=1e-3, rtol=1e-3)
    # a restart's 5 more denoiser calls let that rounding switch a few neighbour pairs at the cutoffs of this
    # random model: a few percent of the values move by a few 1e-2 (a broken equivariance moves them by O(1))
    restarted = dataclasses.replace(gen, project_steps=0)
    x = restarted.window_sample(coords, mask, torch.Generator().manual_seed(5))
    x_r = restarted.window_sample(moved(coords, rot, shift), mask, torch.Generator().manual_seed(5))
    assert not torch.equal(x, raw_out)
    diff = (model.values(x_r, x_r[:, 0]) - model.values(x, x[:, 0])).abs()
    assert float(diff.max()) < 0.1 and float((diff > 1e-3).float().mean()) < 0.1


# ----------------------------------------------------------------------------- given entries in every task
def test_forecast_keeps_start(tiny):
    gen, start = tiny.generator(), tiny.windows[0]["coords"][0]
    out = gen.forecast(start, 11, 2, torch.Generator().manual_seed(0))  # three windows of 5 frames
    assert out.shape == (2, 11, *start.shape) and torch.isfinite(out).all()
    assert torch.equal(out[:, 0], start.expand(2, -1, -1))
    assert ((out[:, 1:] - start).abs().amax(dim=(2, 3)) > 0.05).all()  # every later frame was generated


def test_tps_keeps_both_ends(tiny):
    gen, coords = tiny.generator(), tiny.windows[0]["coords"]
    out = gen.tps(coords[0], coords[-1], 12, 2, torch.Generator().manual_seed(0))  # 5 frames, then 17, resampled
    assert out.shape == (2, 12, *coords.shape[1:]) and torch.isfinite(out).all()
    assert torch.equal(out[:, 0], coords[0].expand(2, -1, -1))
    assert torch.equal(out[:, -1], coords[-1].expand(2, -1, -1))


def test_upsample_keeps_coarse_frames(tiny):
    gen, coarse = tiny.generator(), tiny.windows[0]["coords"][:4]
    k = gen.cfg.tasks.upsample_factor
    out = gen.upsample(coarse, 2, torch.Generator().manual_seed(0))
    assert out.shape == (2, (4 - 1) * k + 1, *coarse.shape[1:]) and torch.isfinite(out).all()
    assert torch.equal(out[:, ::k], coarse.expand(2, -1, -1, -1))
    assert ((out[:, 1::k] - coarse[:-1]).abs().amax(dim=(2, 3)) > 0.05).all()


@pytest.mark.parametrize("subset", [False, True])
def test_inpaint_keeps_protein_and_ignores_hidden_ligand(any_tiny, subset):
    model = any_tiny.model
    gen, frames = any_tiny.generator(), any_tiny.windows[0]["coords"][:4]
    tokens = None
    if subset:  # inpaint the token of three of the eight ligand atoms: the whole token is generated
        tokens = torch.zeros_like(model.token_is_ligand)
        tokens[model.tokens.atom_token[torch.nonzero(model.atoms.is_ligand).flatten()[:3]]] = True
    hidden = model.atoms.is_ligand if tokens is None else tokens[model.tokens.atom_token]  # (A,)
    out = gen.inpaint(frames, 2, torch.Generator().manual_seed(0), tokens)
    assert out.shape == (2, 4, *frames.shape[1:]) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, ~hidden], frames[:, ~hidden].expand(2, -1, -1, -1))
    assert ((out[:, :, hidden] - frames[:, hidden]).abs().amax(dim=(2, 3)) > 0.05).all()
    # where the hidden atoms were in the input must not matter
    elsewhere = frames.clone()
    elsewhere[:, hidden] += 4 * torch.randn(int(hidden.sum()), 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gen.inpaint(elsewhere, 2, torch.Generator().manual_seed(0), tokens), out)


# ----------------------------------------------------------------------------- learning
def test_tiny_model_overfits_one_window(tiny_system, tmp_path):
    """Training on one window (forecast) cuts the diffusion loss at fixed noise levels and noise by 10x, and the
    network then regenerates that window with its bond lengths."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_system, tmp_path, "denoiser.dim=64", "energy.enabled=false")
    _, train_ds, _, _, _, model, diffusion = build(cfg, torch.device("cpu"))
    coords = train_ds[0]["coords"][None]
    key = coords[:, 0]
    x0 = model.values(coords, key)
    mask = task_mask("forecast", cfg.data.window, model.token_is_ligand)[None]
    t_eval = torch.linspace(5, 95, 16).long()

    def loss(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cond, _ = model.condition(key)  # one key frame, broadcast over the batch of noise levels
        b = len(t)
        return diffusion.loss(model.denoise, x0.expand(b, -1, -1, -1), cond, mask.expand(b, -1, -1),
                              weight=model.value_mask, t=t, generator=gen)

    def evaluate() -> float:
        with torch.no_grad():
            return float(loss(t_eval, torch.Generator().manual_seed(7)))

    before = evaluate()
    steps = 400
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        value = loss(torch.randint(0, diffusion.timesteps, (16,), generator=gen), gen)
        opt.zero_grad()
        value.backward()
        opt.step()
        schedule.step()
    after = evaluate()
    # an untrained network outputs zero: ε_θ = √(1-ᾱ_t) x_t (v-parameterisation), loss < E[ε²] = 1
    assert 0.3 < before < 1.1, before
    assert after < before / 10, (before, after)
    # and the network alone (no projection) regenerates the window: bonds inside tokens are the key frame's by
    # construction; those between tokens (peptide bonds) come much closer to the window's own lengths than the
    # prior's (this window's atoms carry 0.2 Å of independent noise per frame, which rigid residues cannot follow)
    gen = Sampler(model.eval(), diffusion, cfg, steps=20, project_steps=0)
    out = gen.window_sample(coords, mask[0], torch.Generator().manual_seed(0))[0]
    i, j = model.atoms.bonds
    across = model.tokens.atom_token[i] != model.tokens.atom_token[j]
    i, j = i[across], j[across]
    dev = ((out[1:, i] - out[1:, j]).norm(dim=-1) - (coords[0, 1:, i] - coords[0, 1:, j]).norm(dim=-1)).abs()
    prior = gen.prior()
    raw = prior.window_sample(coords, mask[0], torch.Generator().manual_seed(0))[0]
    dev_prior = ((raw[1:, i] - raw[1:, j]).norm(dim=-1) - (coords[0, 1:, i] - coords[0, 1:, j]).norm(dim=-1)).abs()
    assert float(dev.mean()) < 0.75 * float(dev_prior.mean()), (float(dev.mean()), float(dev_prior.mean()))


def test_task_masks_reject_bad_requests():
    """Inpainting a system without ligand, or an unknown task, is a HemeplmError (exit 2 in the scripts)."""
    from hemeplm.tasks import task_mask

    no_ligand = torch.zeros(5, dtype=torch.bool)
    with pytest.raises(HemeplmError, match="inpaint needs ligand tokens"):
        task_mask("inpaint", 4, no_ligand)
    with pytest.raises(HemeplmError, match="unknown task 'fly'"):
        task_mask("fly", 4, no_ligand)
    assert task_mask("upsample", 9, no_ligand, upsample_factor=4)[:, 0].tolist() == [
        True, False, False, False, True, False, False, False, True]


def test_long_forecast_keeps_its_geometry(tiny):
    """Ten chained windows from an untrained model: bonds stay at the start frame's lengths to the end (inside
    tokens by construction, between them by the projection) and the ligand stays rigid and near the pocket.

    The refiner is as initialised (output layer zero: it returns the transformer's estimate). With the fixture's
    random weights on its output layer, which reads its saturating readings directly, it would push every token
    up to 0.2 Å per round in random directions, breaks beyond what the projection is for."""
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.refiner.out.weight.zero_()
        model.refiner.out.bias.zero_()
    gen = Sampler(model, tiny.diffusion, tiny.cfg, steps=5)
    start = tiny.windows[0]["coords"][0]
    out = gen.forecast(start, 41, 1, torch.Generator().manual_seed(0))[0]  # (41, A, 3)
    i, j = model.atoms.bonds
    length = (start[i] - start[j]).norm(dim=-1)
    dev = ((out[:, i] - out[:, j]).norm(dim=-1) - length).abs()
    # 0.98 before the projection had peptide terms: the start frame is MD plus 0.2 Å noise per coordinate, so some
    # of its peptide bonds are 40-50° from planar, and the ω term now pulls them back against the bond lengths
    assert float((dev[-10:] <= 0.1).float().mean()) >= 0.96, float((dev[-10:] <= 0.1).float().mean())
    lig = model.atoms.is_ligand
    inside = lig[i] & lig[j]
    assert float(dev[:, inside].max()) < 0.02  # the template's bonds, to float precision
    drift = (out[-1, lig].mean(0) - start[lig].mean(0)).norm()
    assert float(drift) < 8.0, float(drift)


# ----------------------------------------------------------------------------- junction refinement
def _refiner_features(model, coords: torch.Tensor, values: torch.Tensor, cond) -> torch.Tensor:
    """The refiner's features (B, T, N, N_FEATURES) of physical ``values`` (B, T, N, D) keyed on ``coords[:, 0]``."""
    body = posed_body(cond.body, values, model.internal)
    return model.refiner.geometry(rotvec_to_matrix(values[..., :3]), values[..., 3:6], body, cond, model.links(cond, 1),
                                  model.slot_radius)


def test_refiner_reads_the_geometry_between_tokens_of_its_estimate(tiny):
    """On the key frame itself (every transform the identity) the refiner's bond forces vanish; a residue pushed
    0.5 Å along its anchor x axis feels a bond force back along -x; a residue pushed into its neighbour feels a
    contact force away from it; bond and contact forces, and the ω twists, on all tokens each sum to zero (they come
    in pairs)."""
    model = tiny.model
    coords = tiny.windows[0]["coords"][None, :1]
    cond, _ = model.condition(coords[:, 0])
    assert cond.contacts.shape[1] > 0
    v = model.values(coords, coords[:, 0]) * model.norm_std + model.norm_mean
    feats = _refiner_features(model, coords, v, cond)  # (1, 1, N, N_FEATURES)
    assert feats.shape[-1] == N_FEATURES == len(FEATURE_UNITS)
    assert float(feats[..., :6].abs().max()) < 1e-4
    residues = torch.nonzero(~model.token_is_ligand).flatten()
    i = int(residues[len(residues) // 2])
    pushed = v.clone()
    pushed[..., i, 3] += 0.5
    moved = _refiner_features(model, coords, pushed, cond)
    assert float(moved[0, 0, i, 0] - feats[0, 0, i, 0]) < -0.2
    # into the next residue's Cα, along i's anchor axes
    toward = torch.einsum("ji,j->i", cond.frames[0, i], cond.centres[0, i + 1] - cond.centres[0, i])
    crushed = v.clone()
    crushed[..., i, 3:6] += 0.6 * toward
    hit = _refiner_features(model, coords, crushed, cond)
    assert float((hit[0, 0, i, 6:9] - feats[0, 0, i, 6:9]) @ toward) < 0
    # the C-N axis reading is a unit axis times sin ω: on a token with one peptide bond its length is that |sin ω|
    one = (hit[0, 0, :, 12] == 0) ^ (hit[0, 0, :, 13] == 0)
    assert bool(one.any())
    torch.testing.assert_close(hit[0, 0, one, 14:].norm(dim=-1), hit[0, 0, one, 12:14].abs().sum(-1),
                               atol=1e-5, rtol=1e-4)
    assert bool((hit[0, 0, :, 14:].norm(dim=-1) <= hit[0, 0, :, 12:14].abs().sum(-1) + 1e-5).all())
    for part in (slice(0, 3), slice(6, 9), slice(14, 17)):
        total = torch.einsum("nij,nj->i", cond.frames[0], hit[0, 0, :, part])
        assert float(total.abs().max()) < 1e-3, total


def test_refiner_moves_only_the_generated_tokens_rigidly(tiny):
    """With a refiner whose output layer is not zero, inpainting's given protein keeps its values exactly, the
    generated ligand moves, and no torsion changes; a key shared by two windows lends its contacts to both."""
    model = copy.deepcopy(tiny.model)
    torch.nn.init.normal_(model.refiner.out.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    coords = tiny.windows[0]["coords"][None]
    cond, _ = model.condition(coords[:, 0])
    x0 = model.values(coords, coords[:, 0])
    mask = task_mask("inpaint", coords.shape[1], model.token_is_ligand)[None]
    hidden = torch.randn(1, *mask.shape[1:], model.denoiser.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.refiner(x0, hidden, cond, mask, model.norm_mean, model.norm_std, model.internal,
                            model.links(cond, 1), model.slot_radius)
    assert torch.equal(out[mask], x0[mask]) and torch.equal(out[..., 6:], x0[..., 6:])
    assert float((out[~mask] - x0[~mask]).abs().max()) > 1e-3
    shared = model.links(cond, 2)
    one = model.links(cond, 1)
    assert shared["contact_token"].shape[1] == 2 * one["contact_token"].shape[1]
    assert torch.equal(shared["contact_window"].unique(), torch.tensor([0, 1]))


def test_links_of_a_fragment_are_those_inside_it(tiny):
    model = tiny.model
    coords = tiny.windows[0]["coords"][None, :1]
    cond, _ = model.condition(coords[:, 0])
    everything = model.links(cond, 1)
    index = torch.arange(3, 9)
    part = model.links(dataclasses.replace(cond, **cond.select(index)), 1)
    for kind in ("pair", "quad", "contact"):
        inside = ((everything[f"{kind}_token"] >= 3) & (everything[f"{kind}_token"] < 9)).all(0)
        assert part[f"{kind}_token"].shape[1] == int(inside.sum()) > 0, kind
        assert torch.equal(part[f"{kind}_token"] + 3, everything[f"{kind}_token"][:, inside])
        assert torch.equal(part[f"{kind}_slot"], everything[f"{kind}_slot"][:, inside])
    assert torch.equal(part["pair_length"], everything["pair_length"][(everything["pair_token"] >= 3).all(0)
                                                                       & (everything["pair_token"] < 9).all(0)])


# ----------------------------------------------------------------------------- projection and prior
def test_prior_zeroes_the_denoisers_last_layer(tiny):
    """``denoiser.out`` and ``refiner.out`` are the network's last layers (the transformer's output, and the
    refiner's update of the clean estimate that output stands for); the prior zeroes both, so the prior's network
    output (what ``model.denoise`` returns) is exactly zero, and leaves the model's own weights alone."""
    gen = dataclasses.replace(tiny.generator(), project_steps=0)
    last = ("denoiser.out", "refiner.out")
    assert {f"{n}.{p}" for n in last for p in ("weight", "bias")} <= {n for n, _ in gen.model.named_parameters()}
    prior = gen.prior()
    for name in last:
        assert float(gen.model.get_submodule(name).weight.detach().abs().max()) > 0
        out = prior.model.get_submodule(name)
        assert float(out.weight.detach().abs().max()) == 0 and float(out.bias.detach().abs().max()) == 0
    seen = []
    denoise = prior.model.denoise
    prior.model.denoise = lambda *a: seen.append(denoise(*a)) or seen[-1]
    coords = tiny.windows[0]["coords"][None]
    prior.window_sample(coords, task_mask("forecast", coords.shape[1], tiny.model.token_is_ligand),
                        torch.Generator().manual_seed(0))
    assert len(seen) == gen.denoiser_steps
    assert all(not d.any() for d in seen)


def _omega_deviation_deg(x: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(peptide_geometry(x, quads)[0])


def test_projection_makes_a_twisted_peptide_bond_planar(tiny):
    """The last residue turned 60° about its peptide bond C-N: every inter-token 1-2/1-3 distance stays (the bond is
    the axis), only ω twists. The projection's peptide terms bring ω back to within their 15° tolerance; without them
    the projection leaves the twist."""
    model = tiny.model
    key = tiny.windows[0]["coords"][0]
    quads = peptide_quads(model.tokens.torsion_atoms[:, 2], model.internal.pair_index, model.internal.pair_length)
    assert len(quads) == 2 * 5  # two chains of six residues; the bond 89-98 the topology adds is a chain break
    ca0, c0, n1, ca1 = quads[-1].tolist()
    token = model.tokens.atom_token[ca1]
    atoms = model.tokens.atom_token == token
    axis = torch.nn.functional.normalize(key[n1] - key[c0], dim=0)
    turned = []
    for degrees in (60.0, -60.0):  # the way that takes ω farther from planar
        x = key.clone()
        x[atoms] = (key[atoms] - key[n1]) @ rotvec_to_matrix(axis * np.deg2rad(degrees)).T + key[n1]
        turned.append(x)
    twisted = max(turned, key=lambda x: float(_omega_deviation_deg(x, quads[-1:])))
    assert float(_omega_deviation_deg(twisted, quads[-1:])) > 50 > 20 > float(_omega_deviation_deg(key, quads[-1:]))
    assert float(bond_deviation(twisted[None, None], model.internal).max()) < 1e-6

    def coordinates(v):
        return model.coordinates(v, key[None])

    values = model.values(twisted[None, None], key[None])
    free = torch.zeros(values.shape[:-1], dtype=torch.bool)
    free[..., token] = True
    kept = coordinates(project(coordinates, values, free, model.internal, steps=50)[0])[0, 0]
    planar = coordinates(project(coordinates, values, free, model.internal, steps=50, peptide=quads)[0])[0, 0]
    before, without, with_terms = (float(_omega_deviation_deg(x, quads[-1:])) for x in (twisted, kept, planar))
    assert with_terms < 18 and without > with_terms + 15, (before, without, with_terms)
    torch.testing.assert_close(planar[~atoms], key[~atoms], atol=1e-4, rtol=0)  # only the free token moved


def test_peptide_penalty_is_flat_bottomed():
    """Zero for a trans and a cis peptide bond with ideal angles; positive once ω or an angle leaves its tolerance."""
    def bond(omega_deg: float, ca_c_n: float = 116.2, c_n_ca: float = 121.7) -> torch.Tensor:
        """CA(i), C(i), N(i+1), CA(i+1) with these angles and ω (degrees)."""
        c, n = torch.zeros(3, dtype=torch.float64), torch.tensor([1.33, 0, 0], dtype=torch.float64)
        a = np.deg2rad(ca_c_n)
        ca0 = c + 1.52 * torch.tensor([np.cos(a), np.sin(a), 0], dtype=torch.float64)
        b, w = np.deg2rad(c_n_ca), np.deg2rad(omega_deg)
        ca1 = n + 1.46 * torch.tensor([-np.cos(b), np.sin(b) * np.cos(w), np.sin(b) * np.sin(w)], dtype=torch.float64)
        return torch.stack([ca0, c, n, ca1])

    quads = torch.arange(4)[None]
    for omega in (180.0, 0.0, 170.0, -172.0):
        dev, t1, t2 = peptide_geometry(bond(omega), quads)
        assert float(torch.rad2deg(dev)) == pytest.approx(min(abs(omega), 180 - abs(omega)), abs=1e-6)
        assert float(torch.rad2deg(t1)) == pytest.approx(116.2) and float(torch.rad2deg(t2)) == pytest.approx(121.7)
        assert float(peptide_penalty(bond(omega), quads)) == 0.0
    assert float(peptide_penalty(bond(140.0), quads)) > 0      # 40° from trans
    k, sigma = PROJECT_ANGLE_SIGMAS, PEPTIDE_ANGLES["ca_c_n"][1]
    assert float(peptide_penalty(bond(180.0, ca_c_n=116.2 + (k - 0.5) * sigma), quads)) == 0.0
    assert float(peptide_penalty(bond(180.0, ca_c_n=116.2 + (k + 0.5) * sigma), quads)) > 0
    assert float(peptide_penalty(bond(180.0, c_n_ca=121.7 - (k + 0.5) * PEPTIDE_ANGLES["c_n_ca"][1]), quads)) > 0


# ----------------------------------------------------------------------------- losses in Ångström, history
def test_structure_terms_score_peptides_and_frame_aligned_error(tiny):
    """FAPE of frames against themselves is ~0; twisting one peptide bond by 57° raises the peptide term (the
    tiny system's frames carry 0.2 Å noise, so theirs is not 0); FAPE is blind to a rigid motion of the
    prediction but sees a local distortion."""
    from hemeplm.geometry.structure import frame_aligned_error, structure_terms

    model = tiny.model
    md = tiny.windows[0]["coords"][None]  # (1, T, A, 3)
    frames = model.tokens.frame_atoms
    terms = structure_terms(md, model.internal, model.peptide, md, frames)
    assert set(terms) == {"bond", "clash", "peptide", "fape"}
    assert float(terms["fape"]) < 1e-3
    flattest = int(peptide_geometry(md[0, 0], model.peptide)[0].argmin())  # twisting it by 57° can only hurt
    ca, c, n, ca1 = model.peptide[flattest].tolist()
    token = model.tokens.atom_token[ca1]
    turned = md.clone()
    rot = rotvec_to_matrix(torch.nn.functional.normalize(md[0, 0, n] - md[0, 0, c], dim=-1) * 1.0)  # 57°
    downstream = torch.arange(md.shape[2]) >= int(model.tokens.atom_index[token][model.tokens.atom_index[token] >= 0].min())
    turned[:, :, downstream] = (md[:, :, downstream] - md[:, :, None, n]) @ rot.T + md[:, :, None, n]
    twisted = float(structure_terms(turned, model.internal, model.peptide)["peptide"])
    assert twisted > float(terms["peptide"]) + 0.5 / len(model.peptide), (twisted, float(terms["peptide"]))
    rigid = moved(md, random_rotation(3), torch.tensor([5.0, -2.0, 1.0]))
    assert float(frame_aligned_error(rigid, md, frames)) < 1e-3
    assert float(frame_aligned_error(turned, md, frames)) > 0.1


def test_contact_error_holds_the_packing_both_ways(tiny):
    """The contact term is zero on the truth and after a rigid motion of the prediction; it grows when the
    structure is squeezed toward its centre and when it swells, where the clash term sees only the squeeze. The
    ligand's term sees only its own pairs: a ligand moved out of its pocket raises it by far more than the mean
    over all pairs, and moving protein atoms far from the ligand leaves it where it was."""
    from hemeplm.geometry.structure import contact_error, structure_terms

    model = tiny.model
    md = tiny.windows[0]["coords"][None]  # (1, T, A, 3)
    lig = model.atoms.is_ligand
    assert lig.dtype == torch.bool and lig.any()
    assert set(structure_terms(md, model.internal, truth=md, contact=True)) == {"bond", "clash", "contact"}
    assert set(structure_terms(md, model.internal, truth=md, contact=True, ligand=lig)) == {
        "bond", "clash", "contact", "ligand_contact"}

    def error(x, ligand=None):
        return {k: float(v) for k, v in contact_error(x, md, model.internal, ligand).items()}

    assert max(error(md, lig).values()) < 1e-10
    rigid = moved(md, random_rotation(3), torch.tensor([5.0, -2.0, 1.0]))
    assert max(error(rigid, lig).values()) < 1e-8
    centre = md.mean(dim=-2, keepdim=True)
    squeezed, swollen = centre + 0.8 * (md - centre), centre + 1.05 * (md - centre)
    assert error(squeezed)["contact"] > 0.01
    assert error(swollen)["contact"] > 0.001
    clash = structure_terms(swollen, model.internal)["clash"]
    assert float(clash) <= float(structure_terms(md, model.internal)["clash"]) + 1e-9
    shifted = md.clone()
    shifted[..., lig, :] += torch.tensor([1.0, 0.0, 0.0])
    found = error(shifted, lig)
    assert found["ligand_contact"] > 0.05 and found["ligand_contact"] > 5 * found["contact"]
    near = (torch.cdist(md[0, 0], md[0, 0, lig]).min(-1).values < 8.0) | lig
    far = md.clone()
    far[..., ~near, :] += torch.tensor([0.3, 0.0, 0.0])
    found = error(far, lig)
    assert found["ligand_contact"] < 1e-8 < found["contact"]


def test_forecast_mask_gives_the_history_and_training_draws_it():
    import random

    from hemeplm.tasks import draw_training_mask

    lig = torch.tensor([False, False, True])
    mask = task_mask("forecast", 9, lig, history=3)
    assert mask[:3].all() and not mask[3:].any()
    rng = random.Random(0)
    given = {int(draw_training_mask(rng, {"forecast": 1.0}, 9, lig, 4, history=3)[1].all(-1).sum()) for _ in range(60)}
    assert given == {1, 2, 3}
    rng = random.Random(0)
    assert {int(draw_training_mask(rng, {"forecast": 1.0}, 9, lig, 4)[1].all(-1).sum()) for _ in range(20)} == {1}


def test_forecast_with_history_continues_each_window_from_its_predecessors_last_frames(tiny):
    """With tasks.history 3 the windows overlap by 3 frames, and those frames are not generated twice."""
    gen = dataclasses.replace(tiny.generator(), project_steps=0)
    gen.cfg = dataclasses.replace(gen.cfg, tasks=dataclasses.replace(gen.cfg.tasks, history=3))
    seen = []
    original = gen.window_sample

    def record(coords, mask, generator):
        seen.append((coords.clone(), mask.clone()))
        return original(coords, mask, generator)

    gen.window_sample = record
    t = gen.window
    out = gen.forecast(tiny.windows[0]["coords"][0], 2 * t, 1, torch.Generator().manual_seed(0))
    assert out.shape[1] == 2 * t and len(seen) == len(gen.window_starts(2 * t, 3)) >= 3
    assert seen[0][1].all(-1).sum() == 1 and all(int(m.all(-1).sum()) == 3 for _, m in seen[1:])
    step = t - 3
    torch.testing.assert_close(seen[1][0][:, :3], out[:, step:step + 3])
