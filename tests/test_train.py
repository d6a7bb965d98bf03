"""Training: the checkpoint rebuilds the model alone, resume continues, bad input stops early, torchrun, paper size."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import PRMTOP, ROOT, WritesMarker, tiny_config, tiny_overrides, write_dcd

from hemeplm.train import loop as training
from hemeplm.train.checkpoint import build_model, load_checkpoint, load_state
from hemeplm.config import load_config
from hemeplm.data.dataset import featurize
from hemeplm.diffusion import GaussianDiffusion
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler
from hemeplm.models.surrogate import HemePLM, system_static
from hemeplm.tasks import task_mask


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_alone_rebuilds_the_model(tiny_run, monkeypatch):
    cfg = tiny_run["cfg"]
    coords = torch.from_numpy(featurize(cfg.data)["segments"][0][:cfg.data.window])[None]
    key = coords[:, 0]
    ckpt = load_checkpoint(tiny_run["ckpt"])
    assert ckpt["step"] == 4
    monkeypatch.setattr("hemeplm.data.load.load_topology", lambda *a, **k: pytest.fail("the training data was read"))
    ema, saved_cfg = build_model(ckpt)
    raw, _ = build_model(ckpt, use_ema=False)
    assert saved_cfg == cfg
    assert not torch.equal(ema.denoiser.out.weight, raw.denoiser.out.weight)
    mask = task_mask("forecast", cfg.data.window, ema.token_is_ligand)
    t = torch.tensor([37])
    for rebuilt, live in ((ema, tiny_run["ema"]), (raw, tiny_run["model"].eval())):
        outs = []
        for m in (rebuilt, live):
            m.requires_grad_(False)  # the same kernels for both (attention picks another one for weights with grad)
            cond, _ = m.condition(key)
            outs.append((m.denoise(m.values(coords, key), t, cond, mask[None]), m.predict_energy(key)["forces"]))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # sampling from the checkpoint is sampling from the in-memory EMA model
    live = Sampler(tiny_run["ema"], GaussianDiffusion.from_config(cfg.diffusion), cfg,
                     steps=cfg.diffusion.sample_steps)
    from_ckpt = Sampler.from_checkpoint(tiny_run["ckpt"])
    assert torch.equal(from_ckpt.window_sample(coords, mask, torch.Generator().manual_seed(3)),
                       live.window_sample(coords, mask, torch.Generator().manual_seed(3)))


def test_resume_continues_from_the_saved_step(tiny_system, tmp_path, capsys, monkeypatch):
    import shutil

    import wandb

    runs = []

    class Run:
        def __init__(self, **kwargs):
            runs.append(kwargs)

        def log(self, *args, **kwargs):
            pass

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", Run)
    cfg = tiny_config(tiny_system, tmp_path, "max_steps=4", "ckpt_every=2", "wandb.mode=offline")
    run_dir = training.train(cfg)
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 4
    with pytest.raises(HemeplmError, match="--resume"):  # never silently over a previous run
        training.train(cfg)
    capsys.readouterr()
    longer = tiny_config(tiny_system, tmp_path, "max_steps=7", "ckpt_every=2", "wandb.mode=offline")
    training.train(longer, resume=True)
    assert f"resumed {run_dir / 'ckpt.pt'} at step 4" in capsys.readouterr().out
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 7
    steps = [r["step"] for r in metrics(run_dir) if "train_loss" in r]
    assert steps == list(range(1, 8))  # one line per step, before and after the resume
    # the resumed run continues its wandb run; the same name trained again afresh starts a new one
    shutil.rmtree(run_dir)
    training.train(cfg)
    assert [(r["id"], r["resume"]) for r in runs[:2]] == [(runs[0]["id"], None), (runs[0]["id"], "allow")]
    assert runs[2]["id"] != runs[0]["id"] and runs[2]["id"].startswith("tiny-")


def test_checkpoint_from_before_the_refiner_loads_without_it(tiny_run, tmp_path):
    """A checkpoint whose config has no ``denoiser.refine_steps`` or ``ensemble_offset`` (and whose weights no refiner
    and no offset layer) was trained without them: it is rebuilt so (its ``qm.molecule`` null, as before it was a list, too); loading its weights
    into a model with a refiner (``--resume`` with today's default) says how to resume it; one of the first
    refiner's design is told to retrain; a diffusion with another schedule than the config's is refused."""
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    config = {**ckpt["config"], "denoiser": {k: v for k, v in ckpt["config"]["denoiser"].items()
                                             if k not in ("refine_steps", "ensemble_offset")},
              "qm": {**ckpt["config"]["qm"], "molecule": None, "dataset": None}}  # as written before they were lists
    strip = lambda state: {k: v for k, v in state.items()  # noqa: E731
                           if not k.startswith(("refiner.", "offset_in.", "ensemble_mean"))}
    torch.save({**ckpt, "config": config, "model": strip(ckpt["model"]), "ema": strip(ckpt["ema"])}, tmp_path / "old.pt")
    model, cfg = build_model(load_checkpoint(tmp_path / "old.pt"))
    assert model.refiner is None and cfg.denoiser.refine_steps == 0 and cfg.qm.molecule == cfg.qm.dataset == []
    assert model.offset_in is None and not cfg.denoiser.ensemble_offset
    with pytest.raises(HemeplmError, match=r"old\.pt: its model state .* resume it with denoiser\.refine_steps=0; "
                                           r".* resume it with denoiser\.ensemble_offset=false"):
        load_state(build_model(load_checkpoint(tiny_run["ckpt"]))[0], strip(ckpt["model"]), "model", tmp_path / "old.pt")
    # the first refiner design read 14 features, its output layer its MLP's state only
    first = {**ckpt["ema"], "refiner.out.weight": ckpt["ema"]["refiner.out.weight"][:, :tiny_run["cfg"].denoiser.dim],
             "refiner.features.weight": ckpt["ema"]["refiner.features.weight"][:, :14]}
    torch.save({**ckpt, "ema": first}, tmp_path / "first.pt")
    with pytest.raises(HemeplmError, match=r"first\.pt: its ema state .* earlier design of the junction refiner"):
        build_model(load_checkpoint(tmp_path / "first.pt"))
    model, cfg = build_model(load_checkpoint(tiny_run["ckpt"]))
    assert model.refiner is not None
    with pytest.raises(ValueError, match="noise schedule"):
        training.Objective(model, GaussianDiffusion(100))


# ----------------------------------------------------------------------------- bad input
def test_checkpoint_from_another_version_or_incomplete(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    torch.save({**ckpt, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(HemeplmError, match=r"future\.pt: checkpoint format version 99; this HemePLM reads version 3$"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({**ckpt, "format_version": 1}, tmp_path / "old.pt")
    with pytest.raises(HemeplmError, match=r"old\.pt: checkpoint format version 1; .* older HemePLM .* retrain it"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({k: v for k, v in ckpt.items() if k not in ("ema", "static")}, tmp_path / "partial.pt")
    with pytest.raises(HemeplmError, match=r"partial\.pt: checkpoint lacks static, ema"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(HemeplmError, match="not a HemePLM checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoint_with_code_in_it_is_refused_unrun(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    live = tmp_path / "live"
    torch.save(WritesMarker(live), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert live.exists()  # the payload does run when unpickled in full
    marker = tmp_path / "marker"
    torch.save({**ckpt, "metrics": [WritesMarker(marker)]}, tmp_path / "evil.pt")
    refused = r"evil\.pt: refused: this checkpoint holds Python objects other than tensors, numbers, strings, lists"
    with pytest.raises(HemeplmError, match=refused + r" and dicts \(io\.open\); refused without running them.*retrain it"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


class MakesFolder:
    """Unpickling calls os.mkdir: a function of a module torch's safe loader blocks as a whole."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        import os

        return os.mkdir, (self.folder,)


def test_checkpoint_calling_a_blocked_module_is_described_as_such(tiny_run, tmp_path):
    import pickle

    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    made = tmp_path / "made"
    torch.save({**ckpt, "metrics": [MakesFolder(made)]}, tmp_path / "blocked.pt")
    with open(tmp_path / "bare.pt", "wb") as fh:  # a bare pickle (not torch.save's zip)
        pickle.dump({"config": MakesFolder(made)}, fh, protocol=4)
    for name in ("blocked.pt", "bare.pt"):
        with pytest.raises(HemeplmError) as info:
            load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert re.search(r"holds Python objects other than .* \((posix|os)\.mkdir\); refused without running them",
                         message), message
        assert "truncated or corrupted" not in message and "weights_only" not in message
        assert not made.exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HemeplmError, match=r"garbage\.pt: not a readable checkpoint \(truncated or corrupted\?\): "
                                           r"the safe loader stopped at pickle instruction 110$"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_unknown_or_mistyped_config_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("denoiser:\n  depht: 3\n")
    with pytest.raises(HemeplmError, match=rf"{re.escape(str(bad))}: unknown config key 'denoiser.depht' "
                                           r"\(known here: .*depth"):
        load_config(bad)
    command_line_errors = {
        "denoiser.depht=3": r"command line: unknown config key 'denoiser.depht'",
        "encoder={hiden: 3}": r"unknown config key 'encoder.hiden'",
        "max_steps=1e5": r"config key 'max_steps' expects int, got '1e5'",
        "data=3": r"config key 'data' is a section",
        # keys whose default is None are still checked against their declared type
        "denoiser.max_tokens=abc": r"config key 'denoiser.max_tokens' expects int or None, got 'abc'",
        "data.ligand_file=3": r"config key 'data.ligand_file' expects str or None, got 3",
        "max_steps=null": r"config key 'max_steps' expects int, got None",
        # values out of range, refused before any work
        "optim.batch_size=0": r"config key 'optim.batch_size' must be at least 1, got 0",
        "encoder.layers=-1": r"config key 'encoder.layers' must be at least 1, got -1",
        "optim.lr=-1": r"config key 'optim.lr' must be above 0, got -1.0",
        "optim.lr=.nan": r"config key 'optim.lr' must be above 0, got nan",
        "optim.ema_decay=2": r"config key 'optim.ema_decay' must be between 0 and 1, got 2.0",
        "data.window=1": r"config key 'data.window' must be at least 2, got 1",
        "data.truncated=maybe": r"config key 'data.truncated' must be one of error, warn, got 'maybe'",
        "data.split=[0.5,0.6,0]": r"config key 'data.split' must be three fractions .* that sum to 1",
        "denoiser.heads=3": r"config key 'denoiser.dim' \(128\) must be divisible by 'denoiser.heads' \(3\)",
        "data.held_out=[./data/t4l_l99a_xylene/labelled/traj/traj.dcd]":
            r"config key 'data.held_out' names a training trajectory of 'data.trajectories': .*labelled/traj/traj.dcd",
    }
    for override, message in command_line_errors.items():
        with pytest.raises(HemeplmError, match=message):
            load_config(None, [override])
    assert load_config(None, ["optim.lr=1e-3", "optim.weight_decay=0"]).optim.lr == 1e-3  # YAML's "1e-3" string
    cfg = load_config(None, ["denoiser.max_tokens=500", "data.ligand=null", "data.trajectories=a.xtc"])
    assert (cfg.denoiser.max_tokens, cfg.data.ligand, cfg.data.trajectories) == (500, None, ["a.xtc"])
    proc = subprocess.run([sys.executable, "train.py", "--config", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"train.py: error: {bad}: unknown config key 'denoiser.depht' (known here: "
                                   "cross_window, depth, dim, domain_size, ensemble_offset, fragment_halo, heads, "
                                   "local_neighbors, max_tau, max_tokens, mlp_ratio, pocket_radius, refine_steps, "
                                   "spatial)")


def test_missing_held_out_replica_refused_before_training(tiny_system, tmp_path, monkeypatch):
    """A held-out replica is read only after training (tools/demo.py): a missing one is named before any work."""
    monkeypatch.setattr(training, "build", lambda *a, **k: pytest.fail("built"))
    cfg = tiny_config(tiny_system, tmp_path, f"data.held_out=[{tmp_path / 'gone.xtc'}]")
    with pytest.raises(HemeplmError, match=r"gone.xtc: config key 'data.held_out' names this held-out replica, "
                                           r"which is not a file"):
        training.train(cfg)
    assert not cfg.run_dir.exists()


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tiny_system, tmp_path, monkeypatch):
    original = training.Objective.forward
    calls = []

    def nan_at_step_3(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # the fourth training step is step 3
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(training.Objective, "forward", nan_at_step_3)
    cfg = tiny_config(tiny_system, tmp_path, "max_steps=6", "ckpt_every=2")
    with pytest.raises(HemeplmError) as info:
        training.train(cfg)
    msg = str(info.value)
    assert re.search(r"loss nan .*at step 3\b", msg) and "last good checkpoint (step 2)" in msg, msg
    assert str(tiny_system["trajectory"]) in msg
    ckpt = load_checkpoint(cfg.run_dir / "ckpt.pt")
    assert ckpt["step"] == 2
    model, _ = build_model(ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- sizes and launchers
def test_paper_config_has_about_18m_parameters(tmp_path, t4l_xyz):
    """The paper model's size does not depend on the data beyond its atoms; any T4L trajectory will do."""
    rng = np.random.default_rng(0)
    traj = write_dcd(tmp_path / "t4l.dcd", t4l_xyz[None] + rng.normal(scale=0.02, size=(24, *t4l_xyz.shape)))
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/paper.yaml", "--dry-run", f"data.topology={PRMTOP}",
         f"data.trajectories=[{traj}]", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}",
         "wandb.mode=disabled", "device=cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    n = int(re.search(r"^parameters: (\d+)$", proc.stdout, re.M).group(1))
    assert 15_000_000 <= n <= 25_000_000, n
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


RANK_SCRIPT = '''
"""Train under torchrun; save this rank's parameters as built and as trained."""
import os, sys
import torch
from hemeplm.config import load_config
from hemeplm.train import loop as training

seen = {}
build, ema_update = training.build, training.ema_update

def capture_build(cfg, device):
    out = build(cfg, device)
    seen["built"] = {k: p.detach().clone() for k, p in out[5].named_parameters()}
    return out

def capture_model(ema, model, decay):
    seen["model"] = model
    ema_update(ema, model, decay)

training.build, training.ema_update = capture_build, capture_model
training.train(load_config(None, sys.argv[2:]))
trained = {k: p.detach().clone() for k, p in seen["model"].named_parameters()}
torch.save({"built": seen["built"], "trained": trained}, f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
'''


def test_torchrun_two_ranks_train_in_step(tiny_system, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    overrides = tiny_overrides(tiny_system, tmp_path, "max_steps=3", "ckpt_every=100")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    built, trained = ranks[0]["built"], ranks[0]["trained"]
    moved = [k for k in trained if not torch.equal(trained[k], built[k])]
    assert len(moved) > len(trained) // 2, "training barely moved the weights"
    for k in trained:
        assert torch.equal(ranks[1]["trained"][k], trained[k]), k  # the two ranks ended in step, bit for bit
    run_dir = tmp_path / "runs" / "tiny"
    ckpt = load_checkpoint(run_dir / "ckpt.pt")
    assert ckpt["step"] == 3
    assert all(torch.equal(ckpt["model"][k], v) for k, v in trained.items())
    assert [r["step"] for r in metrics(run_dir) if "train_loss" in r] == [1, 2, 3]  # rank 0 alone logs


def test_angstrom_losses_train_and_are_logged(tiny_system, tmp_path):
    """structure.peptide_weight, fape_weight, contact_weight and ligand_contact_weight add their terms to the loss
    (finite, logged each step), tasks.history trains forecasts from more than one given frame and tasks.key_noise
    from perturbed starts."""
    cfg = tiny_config(tiny_system, tmp_path, "max_steps=3", "structure.peptide_weight=10",
                      "structure.fape_weight=0.2", "structure.contact_weight=3",
                      "structure.ligand_contact_weight=3", "tasks.history=2",
                      "tasks.key_noise=0.3", "tasks.tps=0", "tasks.inpaint=0", "tasks.upsample=0")
    run_dir = training.train(cfg)
    rows = [r for r in metrics(run_dir) if "train_loss" in r]
    assert len(rows) == 3
    for r in rows:
        keys = {k for k in r if "peptide" in k or "fape" in k or "contact" in k}
        assert len(keys) == 4 and all(math.isfinite(r[k]) and r[k] >= 0 for k in keys), r
    with pytest.raises(HemeplmError, match="tasks.history"):
        tiny_config(tiny_system, tmp_path, "tasks.history=5")


def test_perturbed_starts_break_only_the_junctions_between_tokens(tiny_run):
    """tasks.key_noise moves each token's rigid body in the key frame and in the given frames right after it (a
    forecast's history): distances inside a token stay, the bonds between tokens stretch more the larger the
    noise, no noise gives the frames back, and the frames after the given ones stay exactly as they were."""
    model, cfg = build_model(load_checkpoint(tiny_run["ckpt"]))
    window = torch.as_tensor(featurize(cfg.data)["segments"][0][:4], dtype=torch.float32)
    coords = torch.stack([window, window.flip(0)])  # (2, 4, A, 3)
    mask = torch.zeros(2, 4, model.tokens.kind.numel(), dtype=torch.bool)
    mask[0, :2] = True  # a forecast given two frames
    mask[1, :, :3] = True  # inpainting: no frame wholly given, the key alone is perturbed
    token = model.tokens.atom_token
    a, b = torch.triu_indices(model.n_atoms, model.n_atoms, 1)
    inside = (token[a] == token[b]) & (token[a] >= 0)
    a, b = a[inside], b[inside]
    i, j = model.internal.pair_index
    error = []
    for noise in (0.0, 0.3, 1.0):
        objective = training.Objective(model, GaussianDiffusion.from_config(cfg.diffusion), key_noise=noise)
        moved = objective.perturbed_start(coords, mask, torch.Generator().manual_seed(0))
        assert torch.equal(moved[0, 2:], coords[0, 2:]) and torch.equal(moved[1, 1:], coords[1, 1:])
        starts = torch.cat([moved[0, :2], moved[1, :1]])  # (3, A, 3) the perturbed frames
        if noise == 0:  # the frames decoded from their values (a ligand group takes its template's shape)
            base = starts
            protein = ~model.atoms.is_ligand.bool()
            assert float((starts[:1] - coords[0, :1])[:, protein].norm(dim=-1).max()) < 1e-4
        within = (starts[:, a] - starts[:, b]).norm(dim=-1) - (base[:, a] - base[:, b]).norm(dim=-1)
        assert float(within.abs().max()) < 1e-3
        error.append([float(((starts[k, i] - starts[k, j]).norm(dim=-1) - (base[k, i] - base[k, j]).norm(dim=-1))
                            .abs().mean()) for k in range(3)])
    error = torch.tensor(error)  # (noise, frame)
    assert float(error[0].max()) < 1e-6 < 0.01 < float(error[1].min()), error
    assert bool((error[1] < error[2]).all()), error


def test_rollout_windows_start_from_the_models_own_frames(tiny_run):
    """tasks.rollout: a forecast window's given frames become the last frames the model samples for the window
    before it (from that window's true first frames, with the same generator), only in the windows chosen; the
    frames after them stay the MD's. The dataset's frames before each window are the trajectory's, and none are
    claimed at the start of the split."""
    model, cfg = build_model(load_checkpoint(tiny_run["ckpt"]))
    feats = featurize(cfg.data)
    ds = training.WindowDataset(feats, cfg.data, "train", before=cfg.data.window - 1)
    lag, t = cfg.data.lag, cfg.data.window
    items = [it for it in (ds[i] for i in range(len(ds))) if bool(it["has_before"])]
    assert items and not bool(ds[0]["has_before"])
    seg = feats["segments"][0]
    start = int(items[0]["start"])
    assert np.array_equal(items[0]["before"].numpy(), seg[start - (t - 1) * lag:start:lag])
    coords = torch.stack([it["coords"] for it in items[:2]])
    before = torch.stack([it["before"] for it in items[:2]])
    h = 2
    mask = task_mask("forecast", t, model.token_is_ligand, history=h).expand(2, -1, -1)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    objective = training.Objective(model, diffusion, rollout=1.0, rollout_steps=3)
    use = torch.tensor([True, False])
    out = objective.rollout_start(coords, mask, before, use, torch.Generator().manual_seed(0))
    assert torch.equal(out[1], coords[1]) and torch.equal(out[0, h:], coords[0, h:])
    previous = torch.cat([before[:1, h - 1:], coords[:1, :h]], 1)  # the T frames that end with the given ones
    x = model.sample_window(diffusion, previous, mask[:1], torch.Generator().manual_seed(0), 3)
    expected = model.coordinates(x, previous[:, 0])[:, t - h:]
    assert torch.allclose(out[:1, :h], expected)
    moved = (out[0, :h] - coords[0, :h]).norm(dim=-1).mean()
    assert 0.01 < float(moved), moved  # the model's frames, not the MD's


def test_rollout_trains(tiny_system, tmp_path, monkeypatch):
    """tasks.rollout=1 trains forecast windows given all tasks.history frames from the model's own frames (finite
    losses every step), never those given fewer (a forecast's first window, keyed on an MD frame); a fraction
    outside [0, 1] is refused."""
    given = []
    original = training.Objective.rollout_start

    def spy(self, coords, mask, before, use, generator=None, lag=None):
        given.append((int(mask[0].all(-1).long().cumprod(0).sum()), int(use.sum())))
        return original(self, coords, mask, before, use, generator, lag)

    monkeypatch.setattr(training.Objective, "rollout_start", spy)
    cfg = tiny_config(tiny_system, tmp_path, "max_steps=6", "tasks.history=2", "tasks.rollout=1",
                      "tasks.rollout_steps=2", "tasks.tps=0", "tasks.inpaint=0", "tasks.upsample=0")
    rows = [r for r in metrics(training.train(cfg)) if "train_loss" in r]
    assert len(rows) == 6 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert given and all(h == 2 for h, _ in given) and any(n > 0 for _, n in given), given
    with pytest.raises(HemeplmError, match="tasks.rollout"):
        tiny_config(tiny_system, tmp_path, "tasks.rollout=1.5")


def test_structure_noise_limit_reaches_the_loss(tiny_system, tmp_path, monkeypatch):
    """structure.noise_limit is the fraction of the steps below which the diffusion loss counts the structure
    terms (GaussianDiffusion.loss's x0_loss_until), in training and validation; outside [0, 1] it is refused."""
    seen = []
    original = GaussianDiffusion.loss

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("x0_loss_until"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, "loss", spy)
    training.train(tiny_config(tiny_system, tmp_path, "max_steps=2", "structure.noise_limit=0.25"))
    assert seen and all(v == 0.25 for v in seen), seen
    with pytest.raises(HemeplmError, match="structure.noise_limit"):
        tiny_config(tiny_system, tmp_path, "structure.noise_limit=1.5")


def test_a_validation_split_shorter_than_a_window_is_warned_about(tiny_system, tmp_path, caplog):
    """A validation split that holds no full window trains without validation losses, and says so; one that holds
    windows says nothing."""
    for window, warned in ((3, False), (13, True)):
        caplog.clear()
        cfg = tiny_config(tiny_system, tmp_path, f"data.window={window}", "data.split=[0.7, 0.3, 0.0]")
        with caplog.at_level("WARNING", logger="hemeplm.train.loop"):
            _, train_ds, val_ds, *_ = training.build(cfg, torch.device("cpu"))
        assert len(train_ds) > 0 and (len(val_ds) == 0) == warned
        assert ("no validation window" in caplog.text) == warned
        if warned:
            assert "data.window=13 at data.lag=1 spans 13 frames" in caplog.text


def test_several_lags_train_and_sample_at_each(tiny_system, tmp_path):
    """data.lags: training cuts windows at every lag and tells the denoiser each window's lag (its output
    changes with the lag); the checkpoint samples at any lag it was trained at (frames that far apart), keeps
    data.lag as its default, and refuses a lag it was not trained at, naming those it was."""
    seen = []
    original = training.Objective.diffusion_loss

    def spy(self, coords, mask, t, generator=None, training=False, before=None, has_before=None, lag=None):
        seen.extend(lag.tolist())
        return original(self, coords, mask, t, generator, training, before, has_before, lag)

    cfg = tiny_config(tiny_system, tmp_path, "max_steps=6", "data.lags=[3]", "optim.batch_size=4")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Objective, "diffusion_loss", spy)
        run = training.train(cfg)
    assert set(seen) == {1, 3}
    gen = Sampler.from_checkpoint(run / "ckpt.pt")
    dt = gen.model.static_info["timestep_ps"]
    assert gen.lags_ps == [dt, 3 * dt] and gen.lag == 1 and gen.frame_ps == dt
    m = gen.model
    with torch.no_grad():
        m.denoiser.out.weight.normal_(generator=torch.Generator().manual_seed(0))
    key = torch.as_tensor(featurize(cfg.data)["segments"][0][:1])
    x = torch.randn(1, cfg.data.window, m.tokens.kind.numel(), m.norm_mean.shape[-1])
    mask = task_mask("forecast", cfg.data.window, m.token_is_ligand)[None]
    out = {lag: m.denoise(x, torch.tensor([50]), m.condition(key, lag=lag)[0], mask) for lag in (1, 3)}
    assert not torch.allclose(out[1], out[3])
    torch.testing.assert_close(m.denoise(x, torch.tensor([50]), m.condition(key)[0], mask), out[1])
    coarse = Sampler.from_checkpoint(run / "ckpt.pt", lag_ps=3 * dt)
    assert coarse.lag == 3 and coarse.frame_ps == pytest.approx(3 * dt)
    made = coarse.forecast(key[0], 6, 1, torch.Generator().manual_seed(0))
    assert made.shape[:2] == (1, 6) and torch.isfinite(made).all()
    levels = []
    original_window = Sampler.window_sample

    def window_spy(self, coords, mask, generator, lag=None):
        levels.append(lag)
        return original_window(self, coords, mask, generator, lag)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Sampler, "window_sample", window_spy)
        path = gen.tps(key[0], key[0] + 0.1, 60, 1, torch.Generator().manual_seed(0), span_ps=30 * dt)
    assert levels == [3, 3, 1] and path.shape[1] == 60  # spacings of 7.5, 1.9 and 0.5 ps: the nearest lags
    with pytest.raises(HemeplmError, match=r"trained at \(1, 3 ps\)"):
        Sampler.from_checkpoint(run / "ckpt.pt", lag_ps=2 * dt)
    plain = tiny_config(tiny_system, tmp_path)  # one lag: the model is not told it (checkpoints from before load)
    one = HemePLM(plain, system_static(featurize(plain.data), plain.denoiser.pocket_radius, plain.denoiser.domain_size))
    assert one.denoiser.lag is None and one.condition(key)[0].lag is None


def _trains_and_samples(tiny_system, tmp_path, name: str, setting: str) -> None:
    """Two finite training steps with ``setting``, and a checkpoint that samples finite frames."""
    cfg = tiny_config(tiny_system, tmp_path, "max_steps=2", f"name={name}", setting)
    run = training.train(cfg)
    rows = [r for r in metrics(run) if "train_loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    out = Sampler.from_checkpoint(run / "ckpt.pt").forecast(
        torch.as_tensor(featurize(cfg.data)["segments"][0][0]), 3, 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_bfloat16_training_steps_are_finite(tiny_system, tmp_path):
    """A GPU path, run on the CPU: training with the denoiser under bfloat16 autocast (the geometry around it in
    float32) takes finite steps and saves a checkpoint that samples; an unknown precision is refused."""
    _trains_and_samples(tiny_system, tmp_path, "half", "precision=bfloat16")
    with pytest.raises(HemeplmError, match="'precision' must be one of float32, bfloat16"):
        tiny_config(tiny_system, tmp_path, "precision=float16")


@pytest.mark.slow  # compiling the backward pass takes minutes on a CPU; the compiled forward: test_sample
def test_compiled_training_steps_are_finite(tiny_system, tmp_path):
    """A GPU path, run on the CPU: training with the denoiser compiled by torch.compile takes finite steps."""
    _trains_and_samples(tiny_system, tmp_path, "compiled", "compile=true")
