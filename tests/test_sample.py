"""sample.py: the four tasks from a tiny checkpoint, output files, seeds, and clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
import torch
from conftest import PRMTOP, ROOT, tiny_config, write_dcd

from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler, run_task
from hemeplm.tasks import task_mask


@pytest.fixture(scope="module")
def gen(tiny_run) -> Sampler:
    return Sampler.from_checkpoint(tiny_run["ckpt"])


@pytest.fixture(scope="module")
def frames(tiny_system) -> np.ndarray:
    """(F, A, 3) Å: the tiny trajectory's heavy atoms as the model sees them (superposed on frame 0)."""
    return load_system(tiny_system["topology"], [tiny_system["trajectory"]], ligand="resname TMP").segments[0]


def task(gen, tiny_system, out, name, **kw) -> dict:
    return run_task(gen, name, tiny_system["topology"], tiny_system["trajectory"], out, **kw)


def read(path) -> np.ndarray:
    """(F, A, 3) Å."""
    return mdtraj.load(str(path), top=str(path.with_suffix(".pdb"))).xyz * 10.0


def sample_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_sample_py_forecast_past_one_window(tiny_run, tiny_system, frames, tmp_path):
    out = tmp_path / "forecast.dcd"
    argv = ["--ckpt", str(tiny_run["ckpt"]), "--task", "forecast", "--topology", str(tiny_system["topology"]),
            "--frames", str(tiny_system["trajectory"]), "--start", "3", "--num-frames", "11", "--out", str(out)]
    proc = sample_py(*argv)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["num_frames"] == 11 and summary["trajectories"] == [str(out)]
    # the checkpoint's diffusion.sampler; denoiser calls per window: sample_steps, then a restart of 5 steps
    assert (summary["sampler"], summary["steps"]) == ("ddim", 5 + 5)
    assert json.loads(out.with_suffix(".json").read_text()) == summary
    xyz = read(out)
    assert xyz.shape == (11, tiny_run["ema"].n_atoms, 3)  # windows of 5 frames, continued from their last frame
    np.testing.assert_allclose(xyz[0], frames[3], atol=1e-4)
    assert (np.abs(xyz[1:] - frames[3]).max(axis=(1, 2)) > 0.05).all()
    # a second run refuses to overwrite, with one line and exit code 2
    again = sample_py(*argv)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"sample.py: error: {out}: would overwrite {out}, {out.with_suffix('.pdb')}, {out.with_suffix('.json')}; "
        "pass --force to replace them"]
    again = sample_py(*argv, "--force", "--seed", "1", "--energies", "--restart", "0.4")
    assert again.returncode == 0, again.stderr
    assert not np.allclose(read(out), xyz, atol=1e-3)  # another seed, another trajectory
    restarted = json.loads(again.stdout)
    assert (restarted["restart"], restarted["restart_steps"], restarted["restarts"]) == (0.4, 5, 1)
    assert restarted["steps"] == 10  # denoiser calls per window: 5 from noise, 5 more from step 40
    energies = json.loads(again.stdout)["energies"]  # the energy model's predictions for every generated frame
    assert np.asarray(energies["residue_interaction_kcal_mol"]).shape == (1, 11, len(energies["residues"]))
    assert np.isfinite(energies["energy_kcal_mol"]).all()


def test_tps_coarse_to_fine(gen, tiny_system, frames, tmp_path):
    out = tmp_path / "tps.dcd"
    summary = task(gen, tiny_system, out, "tps", start=2, end=30, num_frames=12)
    xyz = read(out)
    assert summary["num_frames"] == 12 and xyz.shape[0] == 12  # 5 frames, then 4 x 4 + 1 = 17, resampled to 12
    assert summary["conditioned_frames"] == [0, 11]
    assert len(summary["projection"]["windows"]) == 1 + 4  # one path, then one per gap of its 5 frames
    np.testing.assert_allclose(xyz[0], frames[2], atol=1e-4)
    np.testing.assert_allclose(xyz[-1], frames[30], atol=1e-4)
    assert (np.abs(xyz[1:-1] - frames[2]).max(axis=(1, 2)) > 0.05).all()


def test_upsample_keeps_every_kth_frame(gen, tiny_system, frames, tmp_path):
    out = tmp_path / "fine.dcd"
    k = gen.cfg.tasks.upsample_factor
    summary = task(gen, tiny_system, out, "upsample", start=4, end=21)  # lag 1: coarse frames k file frames apart
    xyz = read(out)
    assert summary["stride"] == k and summary["given_frames"] == [4, 20]  # 9 coarse frames; frame 21 left out
    assert summary["conditioned_frames"] == list(range(0, summary["num_frames"], k))
    assert xyz.shape[0] == summary["num_frames"] == (9 - 1) * k + 1
    np.testing.assert_allclose(xyz[::k], frames[4:21:k], atol=1e-4)
    assert (np.abs(xyz[1::k] - frames[4:20:k]).max(axis=(1, 2)) > 0.05).all()


@pytest.mark.parametrize("t, k", [(5, 2), (9, 4), (16, 4), (8, 3), (6, 4), (7, 6)])
def test_upsample_windows_see_only_training_masks(gen, monkeypatch, t, k):
    """Every window is conditioned on exactly the mask training draws for upsampling (``task_mask``); every
    output frame comes from one window that starts on a coarse frame and holds the coarse frames on both sides."""
    cfg = copy.deepcopy(gen.cfg)
    cfg.data.window, cfg.tasks.upsample_factor = t, k
    up = dataclasses.replace(gen, cfg=cfg)
    calls = []

    def window_sample(self, coords, mask, generator):
        """Marks each generated frame j of window b as 1000 (b + 1) + j."""
        calls.append((coords.clone(), mask))
        mark = 1000.0 * (torch.arange(coords.shape[0])[:, None] + 1) + torch.arange(t)[None]  # (B, T)
        generated = ~mask[:, 0]
        return torch.where(generated[None, :, None, None], mark[:, :, None, None], coords)

    monkeypatch.setattr(Sampler, "window_sample", window_sample)
    span = k * ((t - 1) // k)  # frames from a window's first to its last coarse frame
    for n_coarse in (span // k + 1, span // k + 2, 3 * span // k + 2):
        calls.clear()
        coarse = -1.0 - torch.arange(n_coarse, dtype=torch.float32)[:, None, None].expand(n_coarse, 2, 3)
        out = up.upsample(coarse, 2, None)
        n = (n_coarse - 1) * k + 1
        assert out.shape == (2, n, 2, 3) and torch.equal(out[:, ::k], coarse.expand(2, -1, -1, -1))
        assert all(torch.equal(mask, task_mask("upsample", t, up.model.token_is_ligand, k)) for _, mask in calls)
        (given, _), = calls  # the windows are independent: one batch, samples outer
        n_windows = given.shape[0] // 2
        for s, i in ((s, i) for s in range(2) for i in range(n) if i % k):
            b, j = divmod(int(out[s, i, 0, 0]), 1000)
            first = i - j  # the window's first frame on the timeline
            assert b - 1 in range(s * n_windows, (s + 1) * n_windows)
            assert first % k == 0 and given[b - 1, 0, 0, 0] == coarse[first // k, 0, 0]
            assert (i // k + 1) * k <= first + span  # the next coarse frame is inside the window


@pytest.mark.parametrize("t, k, n_coarse, message", [
    (9, 4, 2, r"upsampling needs at least 3 coarse frames \(one window of 9 frames holds 3 at factor 4\); 2 given"),
    (4, 4, 9, r"upsampling by 4 \(tasks.upsample_factor\) needs windows of more than 4 frames; the model's have 4"),
])
def test_upsample_refuses_what_no_window_fits(gen, t, k, n_coarse, message):
    cfg = copy.deepcopy(gen.cfg)
    cfg.data.window, cfg.tasks.upsample_factor = t, k
    with pytest.raises(HemeplmError, match=message):
        dataclasses.replace(gen, cfg=cfg).upsample(torch.zeros(n_coarse, gen.model.n_atoms, 3), 1, None)


def test_inpaint_keeps_the_protein(gen, tiny_system, frames, tmp_path, caplog):
    out = tmp_path / "inpaint.dcd"
    summary = task(gen, tiny_system, out, "inpaint", start=5, end=13)
    xyz = read(out)
    lig = gen.model.atoms.is_ligand.numpy()
    assert xyz.shape[0] == summary["num_frames"] == 9 and summary["stride"] == 1
    assert summary["inpainted_atoms"] == np.flatnonzero(lig).tolist() and summary["conditioned_frames"] == []
    np.testing.assert_allclose(xyz[:, ~lig], frames[5:14, ~lig], atol=1e-4)
    assert (np.abs(xyz[:, lig] - frames[5:14, lig]).max(axis=(1, 2)) > 0.05).all()
    # two ligand atoms: the xylene is one token, generated whole, and the log names the atoms added
    out2 = tmp_path / "inpaint_part.dcd"
    with caplog.at_level(logging.WARNING, logger="hemeplm.generate.sampler"):
        part = task(gen, tiny_system, out2, "inpaint", start=5, end=13, inpaint_atoms="resname TMP and name C1 C2")
    moved = np.abs(read(out2) - frames[5:14]).max(axis=(0, 2)) > 1e-3
    assert np.flatnonzero(moved).tolist() == part["inpainted_atoms"] == summary["inpainted_atoms"]
    top = gen.model.topology()
    added = [str(top.atom(i)) for i in np.flatnonzero(lig) if top.atom(i).name not in ("C1", "C2")]
    assert len(added) == lig.sum() - 2 and f"also generating {' '.join(added)}" in caplog.text


@pytest.fixture(scope="module")
def split_gen(tiny_system, tmp_path_factory) -> Sampler:
    """An untrained tiny model whose xylene is two ligand tokens of four atoms (``data.ligand_group=4``)."""
    from hemeplm.train.loop import build

    cfg = tiny_config(tiny_system, tmp_path_factory.mktemp("split"), "data.ligand_group=4")
    torch.manual_seed(0)
    _, _, _, _, _, model, diffusion = build(cfg, torch.device("cpu"))
    return Sampler(model.eval(), diffusion, cfg, steps=3)


def test_inpaint_atoms_generates_the_tokens_holding_them(split_gen, tiny_system, frames, tmp_path, caplog):
    m = split_gen.model
    token = m.tokens.atom_token.numpy()
    lig = np.flatnonzero(m.token_is_ligand[m.tokens.atom_token].numpy())
    assert len(set(token[lig])) == 2
    chosen = lig[0]
    whole = np.flatnonzero(token == token[chosen])  # the atoms of its token
    out = tmp_path / "one_token.dcd"
    with caplog.at_level(logging.WARNING, logger="hemeplm.generate.sampler"):
        summary = run_task(split_gen, "inpaint", tiny_system["topology"], tiny_system["trajectory"], out, start=5,
                           end=13, inpaint_atoms=f"index {chosen}")
    moved = np.abs(read(out) - frames[5:14]).max(axis=(0, 2)) > 1e-3
    assert np.flatnonzero(moved).tolist() == whole.tolist() == summary["inpainted_atoms"]
    assert 1 < len(whole) < len(lig)  # the other token stays where it was given
    top = m.topology()
    assert all(str(top.atom(int(i))) in caplog.text for i in whole if i != chosen)


def test_given_frames_at_the_models_spacing(gen, tiny_system, frames, tmp_path):
    """The model's frames are data.lag file frames apart: inpainting reads every lag-th frame, upsampling every
    (lag k)-th; every output is at the model's spacing. A file whose spacing does not divide it is refused."""
    trained = load_system(tiny_system["topology"], [tiny_system["trajectory"]]).timestep_ps
    assert gen.model.static_info["timestep_ps"] == trained
    cfg = copy.deepcopy(gen.cfg)
    cfg.data.lag = 2  # as if trained on every second frame
    lagged = dataclasses.replace(gen, cfg=cfg)
    k = cfg.tasks.upsample_factor
    lig = gen.model.atoms.is_ligand.numpy()
    for name, stride in {"forecast": None, "inpaint": 2, "upsample": 2 * k}.items():
        out = tmp_path / f"{name}.xtc"
        summary = run_task(lagged, name, tiny_system["topology"], tiny_system["trajectory"], out, start=3, end=20,
                           num_frames=6)
        assert summary["stride"] == stride and summary["timestep_ps"] == pytest.approx(2 * trained), name
        traj = mdtraj.load(str(out), top=str(out.with_suffix(".pdb")))
        # from the start frame's time (file frame 3), at the model's spacing
        np.testing.assert_allclose(traj.time, (3 + np.arange(traj.n_frames) * 2) * trained, atol=1e-3)
        if stride is not None:
            assert summary["given_frames"] == [3, 19]
        if name == "inpaint":  # file frames 3, 5, ..., 19
            np.testing.assert_allclose(traj.xyz[:, ~lig] * 10, frames[3:20:2, ~lig], atol=0.011)
        if name == "upsample":  # coarse file frames 3, 3 + 2k, ...
            np.testing.assert_allclose(traj.xyz[::k] * 10, frames[3:20:2 * k], atol=0.011)
    given = mdtraj.load(str(tiny_system["trajectory"]), top=str(tiny_system["topology"]))[:9]
    given.time = np.arange(9) * 5.0
    every5 = tmp_path / "every5ps.xtc"
    given.save_xtc(str(every5))
    for name, need in (("inpaint", 2 * trained), ("upsample", 2 * k * trained)):
        with pytest.raises(HemeplmError, match=rf"every5ps\.xtc: its frames are 5 ps apart, but {name} with this "
                                               rf"checkpoint needs given frames {need:g} ps apart .* not a whole "
                                               r"multiple of 5 ps"):
            run_task(lagged, name, tiny_system["topology"], every5, tmp_path / "refused.xtc")
    assert not list(tmp_path.glob("refused*"))
    one = run_task(lagged, "inpaint", tiny_system["topology"], every5, tmp_path / "one.xtc", start=2, end=2)
    assert one["stride"] == 1 and one["num_frames"] == 1  # one frame has no spacing to match


def test_sampler_and_steps_default_to_the_checkpoint(tiny_run, tmp_path):
    gen = Sampler.from_checkpoint(tiny_run["ckpt"])
    assert (gen.sampler, gen.steps, gen.denoiser_steps) == ("ddim", 5, 5 + 5)  # with a restart of 5 steps
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    ckpt["config"]["diffusion"]["sampler"] = "ancestral"
    torch.save(ckpt, tmp_path / "ancestral.pt")
    ancestral = Sampler.from_checkpoint(tmp_path / "ancestral.pt")
    # every one of diffusion.timesteps, then a restart through every step from step 10 (0.1 of 100)
    assert (ancestral.sampler, ancestral.denoiser_steps) == ("ancestral", 100 + 11)
    ddim = Sampler.from_checkpoint(tmp_path / "ancestral.pt", sampler="ddim", steps=3, restart=0)
    assert (ddim.sampler, ddim.denoiser_steps) == ("ddim", 3)
    ckpt["config"]["diffusion"]["sampler"] = "euler"
    torch.save(ckpt, tmp_path / "euler.pt")
    with pytest.raises(HemeplmError, match=r"euler\.pt: unknown sampler 'euler' \(diffusion\.sampler\)"):
        Sampler.from_checkpoint(tmp_path / "euler.pt")


def test_prior_is_the_model_with_nothing_learnt(gen, frames):
    """``prior()`` zeroes the denoiser's output layer of a copy; the generator it came from is untouched."""
    prior = gen.prior()
    assert prior.model is not gen.model and (prior.sampler, prior.steps) == (gen.sampler, gen.steps)
    out = prior.model.denoiser.out
    assert not out.weight.any() and not out.bias.any() and gen.model.denoiser.out.weight.any()
    start = torch.from_numpy(frames[0])
    learnt = gen.forecast(start, 5, 1, torch.Generator().manual_seed(0))
    nothing = prior.forecast(start, 5, 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(nothing).all() and torch.equal(nothing[:, 0], learnt[:, 0])
    assert not torch.equal(nothing, learnt)


def test_summary_reports_what_the_projection_did(gen, tiny_system, tmp_path):
    """Per window (three of 5 frames for 11), the mean and largest displacement of the generated atoms by the
    projection and the fraction moved more than 0.5 Å; all zero with --project-steps 0 (the raw network output)."""
    summary = task(gen, tiny_system, tmp_path / "f.dcd", "forecast", num_frames=11, num_samples=2)
    found = summary["projection"]
    assert summary["conditioned_frames"] == [0] and summary["fold_hold"] == 0.0
    assert summary["noise_scale"] == 1.0
    assert found["steps"] == gen.projection_steps == 50 and found["moved_threshold_A"] == 0.5
    assert len(found["windows"]) == 3
    for w in found["windows"]:
        assert 0 <= w["mean_A"] <= w["max_A"] and 0 <= w["moved_fraction"] <= 1
        assert 0 <= w["steps_taken"] <= 50 and (w["steps_taken"] > 0) == (w["max_A"] > 0)
    assert found["max_A"] == max(w["max_A"] for w in found["windows"]) and found["mean_A"] > 0
    assert json.loads((tmp_path / "f.json").read_text())["projection"] == found
    raw = task(dataclasses.replace(gen, project_steps=0), tiny_system, tmp_path / "raw.dcd", "forecast", num_frames=11)
    assert raw["project_steps"] == raw["projection"]["steps"] == 0 and len(raw["projection"]["windows"]) == 3
    assert all(w == {"mean_A": 0.0, "max_A": 0.0, "moved_fraction": 0.0, "steps_taken": 0.0}
               for w in raw["projection"]["windows"])


def test_fold_hold_is_opt_in_and_holds_each_windows_key_frame(gen, frames, monkeypatch):
    """Off unless asked for; when on, every window's projection holds the fold of that window's own key frame (for a
    forecast the last frame of the previous window), not the forecast's start."""
    from hemeplm.generate import sampler as sampling

    seen = []

    def project(coordinates, values, free, internal, steps=50, restraint=0.01, fold=None, fold_sigmas=0.0,
                peptide=None, atom_token=None):
        seen.append((None if fold is None else fold.clone(), fold_sigmas, peptide))
        return values, 0

    monkeypatch.setattr(sampling, "project", project)
    start = torch.from_numpy(frames[3])
    assert gen.cfg.structure.fold_sigmas == 0.0 and gen.fold_hold == 0.0
    gen.forecast(start, 11, 2, torch.Generator().manual_seed(0))
    assert len(seen) == 3 and all(fold is None for fold, _, _ in seen)
    assert all(len(peptide) == 2 * 5 for _, _, peptide in seen)  # the peptide terms are always on
    seen.clear()
    held = dataclasses.replace(gen, fold_sigmas=2.5)
    out = held.forecast(start, 11, 2, torch.Generator().manual_seed(0))
    assert [sigmas for _, sigmas, _ in seen] == [2.5] * 3
    for window, (fold, _, _) in enumerate(seen):
        assert torch.equal(fold, out[:, window * (held.window - 1)])  # (samples, A, 3): each sample's key frame
    assert not torch.equal(seen[1][0][0], start)


def test_fold_hold_option(tiny_run, tiny_system, tmp_path, capsys):
    from hemeplm.cli import sample as cli_sample

    common = ["--ckpt", str(tiny_run["ckpt"]), "--task", "forecast", "--topology", str(tiny_system["topology"]),
              "--frames", str(tiny_system["trajectory"]), "--num-frames", "5"]
    with pytest.raises(SystemExit) as exc:
        cli_sample.main([*common, "--out", str(tmp_path / "bad.dcd"), "--fold-hold", "-1"])
    assert exc.value.code == 2 and "argument --fold-hold: must be a finite number of at least 0, got -1" in capsys.readouterr().err
    cli_sample.main([*common, "--out", str(tmp_path / "held.dcd"), "--fold-hold", "2"])
    assert json.loads((tmp_path / "held.json").read_text())["fold_hold"] == 2.0


def test_seed_decides_the_samples(gen, tiny_system, tmp_path):
    out = tmp_path / "a.dcd"
    task(gen, tiny_system, out, "forecast", num_frames=5, seed=7)
    first = read(out)
    task(gen, tiny_system, out, "forecast", num_frames=5, seed=7, force=True)
    assert np.array_equal(read(out), first)
    task(gen, tiny_system, out, "forecast", num_frames=5, seed=8, force=True)
    assert not np.allclose(read(out), first, atol=1e-3)


def test_num_samples_writes_one_file_each(gen, tiny_system, tmp_path):
    out = tmp_path / "many.dcd"
    summary = task(gen, tiny_system, out, "forecast", num_frames=5, num_samples=3)
    paths = [tmp_path / f"many_{i:03d}.dcd" for i in range(3)]
    assert summary["trajectories"] == [str(p) for p in paths] and not out.exists()
    samples = [mdtraj.load(str(p), top=str(tmp_path / "many.pdb")).xyz for p in paths]
    assert all(s.shape == (5, gen.model.n_atoms, 3) for s in samples)
    assert not np.allclose(samples[0], samples[1], atol=1e-4) and not np.allclose(samples[1], samples[2], atol=1e-4)


# ----------------------------------------------------------------------------- bad input
def test_topology_of_another_system(gen, tiny_system, t4l_dcd, tmp_path):
    with pytest.raises(HemeplmError, match=r"complex\.prmtop: its kept atoms \(1298\) do not match the checkpoint's "
                                           r"system \(100 atoms"):
        run_task(gen, "forecast", PRMTOP, t4l_dcd, tmp_path / "x.dcd")
    renamed = tmp_path / "renamed.pdb"  # same atoms, one renamed
    renamed.write_text(tiny_system["topology"].read_text().replace(" CB  LEU A  84", " CX  LEU A  84", 1))
    assert renamed.read_text() != tiny_system["topology"].read_text()
    with pytest.raises(HemeplmError, match=r"renamed\.pdb: its kept atoms \(100\) do not match"):
        run_task(gen, "forecast", renamed, tiny_system["trajectory"], tmp_path / "x.dcd")
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("name, kw, message", [
    ("tps", {}, "--task tps needs an end frame"),
    ("forecast", {"start": 40}, r"tiny\.dcd: start frame 40 is out of range \(the file has 40 frames\)"),
    ("tps", {"end": -1}, r"tiny\.dcd: end frame -1 is negative; frames are numbered from 0 \(the file has 40 frames\)"),
    ("forecast", {"start": -1}, r"tiny\.dcd: start frame -1 is negative"),
    ("inpaint", {"start": -2, "end": 5}, r"tiny\.dcd: frame range -2\.\.5 holds a negative frame"),
    ("inpaint", {"start": 3, "end": 40}, r"tiny\.dcd: frame range 3\.\.40 is out of range \(the file has 40 frames\)"),
    ("upsample", {"start": 9, "end": 8}, r"tiny\.dcd: frame range 9\.\.8 is out of range"),
    ("inpaint", {"inpaint_atoms": "resname ALA"}, r"--inpaint-atoms 'resname ALA' matches no ligand atom"),
])
def test_bad_task_arguments(gen, tiny_system, tmp_path, name, kw, message):
    with pytest.raises(HemeplmError, match=message):
        task(gen, tiny_system, tmp_path / "x.dcd", name, **kw)
    assert not list(tmp_path.glob("x.*"))


def test_sample_py_errors_are_one_line(tiny_run, tiny_system, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    common = ["--topology", str(tiny_system["topology"]), "--frames", str(tiny_system["trajectory"]),
              "--out", str(tmp_path / "x.dcd")]
    proc = sample_py("--ckpt", str(bad), "--task", "forecast", *common)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sample.py: error: {bad}: not a readable checkpoint")
    proc = sample_py("--ckpt", str(tiny_run["ckpt"]), "--task", "tps", *common)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("sample.py: error: --task tps needs an end frame")


def tool_module(name: str = "demo"):
    """``tools/NAME.py`` as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_tables_with_prior_and_long_forecast(tiny_run, tmp_path):
    """``python tools/demo.py``: forecast and inpaint tables headed by the raw model beside the raw prior (sampled
    with --project-steps 0 and the same seed), then the projected pair, the baselines and the held-out MD; and the
    long forecast's validity (its generated frames and the last ones) beside the held-out MD's."""
    import shutil

    demo = tool_module()

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run["ckpt"], run / "ckpt.pt")
    results = tmp_path / "results.md"
    results.write_text("# Results\n<!-- demo:begin -->\nold tables\n<!-- demo:end -->\nkept\n")
    tables = demo.main([str(run), "--samples", "1", "--long-frames", "12", "--results", str(results)])
    written = results.read_text()
    assert "old tables" not in written and written.startswith("# Results\n<!-- demo:begin -->\nWritten by")
    assert tables["forecast"] in written and written.endswith("<!-- demo:end -->\nkept\n")
    assert set(tables) == {"forecast", "inpaint", "long_forecast"}
    for name in ("forecast", "inpaint"):
        assert tables[name].splitlines()[0].split() == ["metric", "better", "raw", "raw_prior", "model", "prior",
                                                        "static", "random_walk", "reference"]
        sampled = {who: json.loads((run / "eval" / f"{name}{suffix}.json").read_text())
                   for who, suffix in (("raw", "_raw"), ("raw_prior", "_raw_prior"), ("model", ""), ("prior", "_prior"))}
        assert {who: (s["seed"], s["project_steps"]) for who, s in sampled.items()} == {
            "raw": (0, 0), "raw_prior": (0, 0), "model": (0, 50), "prior": (0, 50)}
        assert "physical_filter_pass_fraction" in tables[name]
    assert "omega_outlier_fraction" in tables["forecast"]
    assert "omega_outlier_fraction" not in tables["inpaint"]  # the given protein is not scored
    assert json.loads((run / "eval" / "inpaint.json").read_text())["stride"] == tiny_run["cfg"].data.lag
    long = tables["long_forecast"].splitlines()
    assert long[0] == "all 11 generated frames:" and "last 11 frames:" in long
    assert long[1].split() == ["metric", "better", "model", "reference"]
    found = json.loads((run / "eval" / "long_forecast_validity.json").read_text())
    assert found["frames"] == 12 and found["all"]["model"]["clashes_per_frame"] >= 0
    drifted = found["drift"]   # the tiny MD is 40 frames: the 11-step forecast is shorter, so at that span it is null
    assert drifted["md"]["ca_rmsd_end_A"] > 0 and drifted["forecast_at_end"]["ca_rmsd_end_A"] > 0
    assert drifted["forecast_at_md_span"]["ca_rmsd_end_A"] is None
    assert 0 <= drifted["forecast_at_end"]["pocket_kept_end_fraction"] <= 1
    assert long[-2].startswith("Cα RMSD from the start") and "junctions" in long[-1]
    windows = drifted["windows"]   # 12 frames in windows of 5 from frames 0, 4, 8 (history 1): the one from 8 ends past
    assert windows["junctions"] == 1 and np.isfinite(windows["junction_rg_step_A"])
    assert read(run / "eval" / "long_forecast.xtc").shape[0] == 12


def test_demo_tests_on_the_whole_held_out_replica(tiny_run, tiny_system, tmp_path, capsys):
    """With ``data.held_out`` in the checkpoint's config, ``tools/demo.py`` tests on that whole replica (every
    one of its frames, none of the training trajectory's); a replica saved at another spacing than training's and
    a config with no test split and no replica are refused before any sampling."""
    demo = tool_module()
    frames = mdtraj.load(str(tiny_system["trajectory"]), top=str(tiny_system["topology"]))
    replica = write_dcd(tmp_path / "replica.dcd", frames.xyz[5:22] + 0.01)
    ckpt = torch.load(tiny_run["ckpt"], map_location="cpu", weights_only=False)
    run = tmp_path / "run"
    run.mkdir()
    ckpt["config"]["data"]["held_out"] = [str(replica)]
    torch.save(ckpt, run / "ckpt.pt")
    tables = demo.main([str(run), "--samples", "1", "--long-frames", "0"])
    assert set(tables) == {"forecast", "inpaint"}
    assert f"held-out MD: the whole held-out replica {replica}, 17 frames" in capsys.readouterr().out
    held = mdtraj.load(str(run / "eval" / "heldout.xtc"), top=str(run / "eval" / "system.pdb"))
    assert held.n_frames == 17
    given = json.loads((run / "eval" / "forecast.json").read_text())
    assert given["num_frames"] == (17 - 1) // tiny_run["cfg"].data.lag + 1
    coarse = tmp_path / "coarse.xtc"  # the same replica saved every 2 ps: its frames do not pair with the model's
    mdtraj.Trajectory(frames.xyz[5:22], frames.topology, time=np.arange(17) * 2.0 + 2.0).save_xtc(str(coarse))
    ckpt["config"]["data"]["held_out"] = [str(coarse)]
    torch.save(ckpt, run / "ckpt.pt")
    with pytest.raises(HemeplmError, match=r"coarse.xtc: frames are 2 ps apart; the model was trained on frames 1 ps "
                                           r"apart \(lag 1\): a held-out replica must be saved at the training spacing"):
        demo.main([str(run), "--samples", "1", "--long-frames", "0"])
    ckpt["config"]["data"].update(held_out=[], split=[0.85, 0.15, 0.0])
    torch.save(ckpt, run / "ckpt.pt")
    with pytest.raises(HemeplmError, match=r"the last 0 frames of .* holds 0 frame\(s\) .*: nothing to test on"):
        demo.main([str(run), "--samples", "1", "--long-frames", "0"])


# ----------------------------------------------------------------------------- values checked before any work
def cli_sample(tiny_run, tiny_system, out, *extra: str) -> list[str]:
    return ["sample", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]),
            "--frames", str(tiny_system["trajectory"]), "--out", str(out), *extra]


@pytest.mark.parametrize("extra, message", [
    (["--num-frames", "0"], "argument --num-frames: must be at least 2, got 0"),
    (["--num-frames", "-5"], "argument --num-frames: must be at least 2, got -5"),
    (["--num-samples", "0"], "argument --num-samples: must be at least 1, got 0"),
    (["--start", "-1"], "argument --start: must be at least 0, got -1"),
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
])
def test_sample_numbers_refused_by_the_parser(tiny_run, tiny_system, tmp_path, capsys, extra, message):
    from hemeplm.cli import main

    with pytest.raises(SystemExit) as info:
        main(cli_sample(tiny_run, tiny_system, tmp_path / "x.xtc", "--task", "forecast", *extra))
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_sample_too_many_frames_for_memory_refused_before_work(tiny_run, tiny_system, tmp_path, capsys, monkeypatch):
    from hemeplm.cli import main
    from hemeplm.generate import sampler

    monkeypatch.setattr(Sampler, "forecast", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(SystemExit) as info:
        main(cli_sample(tiny_run, tiny_system, tmp_path / "x.xtc", "--task", "forecast", "--num-frames", str(10 ** 9)))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    limit = sampler.memory_limit(torch.device("cpu"))
    assert re.search(r"1000000000 frames x 1 sample\(s\) of 100 atoms need at least 1\.2 TB for their coordinates "
                     r"alone, more than this machine's [\d.]+ [GMT]B of memory", err), err
    assert limit < 1.2e12 and not list(tmp_path.iterdir())
    # the API refuses the same, and zero frames or samples
    with pytest.raises(HemeplmError, match="need at least"):
        sampler.check_request(Sampler.from_checkpoint(tiny_run["ckpt"]), "tps", 10 ** 9, 1)
    for kw, message in (({"num_frames": 0}, "num_frames must be an integer of at least 2, got 0"),
                        ({"num_frames": 1}, "num_frames must be an integer of at least 2, got 1"),
                        ({"num_samples": 0}, "num_samples must be an integer of at least 1, got 0")):
        with pytest.raises(HemeplmError, match=message):
            task(Sampler.from_checkpoint(tiny_run["ckpt"]), tiny_system, tmp_path / "y.xtc", "forecast", **kw)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- outputs
def test_outputs_checked_before_sampling_and_summary_written_last(tiny_run, tiny_system, tmp_path, capsys,
                                                                   monkeypatch):
    from hemeplm.cli import main

    out = tmp_path / "fc.xtc"
    out.with_suffix(".html").write_text("mine")  # --view would overwrite it: refused before the checkpoint is read
    monkeypatch.setattr(Sampler, "from_checkpoint", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    with pytest.raises(SystemExit):
        main(cli_sample(tiny_run, tiny_system, out, "--task", "forecast", "--view"))
    assert f"would overwrite {out.with_suffix('.html')}" in capsys.readouterr().err
    assert out.with_suffix(".html").read_text() == "mine" and not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(cli_sample(tiny_run, tiny_system, blocker / "fc.xtc", "--task", "forecast"))
    assert f"cannot write outputs: {blocker} is a file, not a folder" in capsys.readouterr().err
    monkeypatch.undo()
    # the summary is written after every other output, and records them all
    written = {}
    real = sampler_module().write_json

    def record(path, summary):
        written.update({p.name: p.exists() for p in tmp_path.iterdir()})
        real(path, summary)

    monkeypatch.setattr("hemeplm.cli.sample.write_json", record)
    out.with_suffix(".html").unlink()
    main(cli_sample(tiny_run, tiny_system, out, "--task", "forecast", "--num-frames", "3", "--view",
                    "--no-confidence"))
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["view"] == str(out.with_suffix(".html")) and "fc.html" in written and "fc.json" not in written
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_view_reads_the_given_frames_as_sampling_did(tiny_run, tiny_system, tmp_path):
    """``--truncated warn --view`` on a DCD cut mid-frame: the page's given-MD panel is read with the sampling's
    --truncated (it used to fail after the trajectories were written, and no summary was)."""
    from hemeplm.cli import main

    cut = tmp_path / "cut.dcd"
    cut.write_bytes(tiny_system["trajectory"].read_bytes()[:-100])
    out = tmp_path / "fc.xtc"
    main(["sample", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]), "--frames", str(cut),
          "--out", str(out), "--task", "forecast", "--num-frames", "3", "--truncated", "warn", "--view",
          "--no-confidence"])
    assert json.loads(out.with_suffix(".json").read_text())["view"] == str(out.with_suffix(".html"))


def sampler_module():
    from hemeplm.generate import sampler

    return sampler


def test_a_failed_write_leaves_no_partial_file(gen, tiny_system, tmp_path, monkeypatch):
    def half_then_fail(self, filename, **kw):
        with open(filename, "wb") as fh:
            fh.write(b"half a trajectory")
        raise OSError("disk full")

    monkeypatch.setattr(mdtraj.Trajectory, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        task(gen, tiny_system, tmp_path / "fc.xtc", "forecast", num_frames=3, confidence=False)
    assert not list(tmp_path.iterdir())  # no fc.xtc, no temporary file, no summary


# ----------------------------------------------------------------------------- times, numbering, confidence
def test_times_continue_from_the_start_frame(gen, tiny_system, tmp_path):
    """Generated frame k is at the start frame's time plus k times the generated spacing; a tps path within one
    file at its real spacing (frames 2 to 30 of a 1 ps file, 8 frames: 4 ps)."""
    dt = gen.model.static_info["timestep_ps"]
    fc = task(gen, tiny_system, tmp_path / "fc.xtc", "forecast", start=5, num_frames=4, confidence=False)
    np.testing.assert_allclose(mdtraj.load(str(tmp_path / "fc.xtc"), top=fc["topology_pdb"]).time,
                               5 * dt + np.arange(4) * gen.frame_ps, atol=1e-3)
    assert fc["start_time_ps"] == pytest.approx(5 * dt)
    path = task(gen, tiny_system, tmp_path / "tps.xtc", "tps", start=2, end=30, num_frames=8, confidence=False)
    assert path["timestep_ps"] == pytest.approx(28 * dt / 7)
    np.testing.assert_allclose(mdtraj.load(str(tmp_path / "tps.xtc"), top=path["topology_pdb"]).time,
                               2 * dt + np.arange(8) * 4 * dt, atol=1e-3)
    # --timestep-ps gives a DCD its spacing
    slow = task(gen, tiny_system, tmp_path / "slow.xtc", "forecast", start=5, num_frames=3, confidence=False,
                timestep_ps=10.0)
    assert slow["start_time_ps"] == pytest.approx(50.0)


def test_input_residue_numbers_reach_the_outputs(gen, tiny_system, tmp_path):
    lines = tiny_system["topology"].read_text().splitlines(keepends=True)
    shifted = tmp_path / "shifted.pdb"  # the same system, residues numbered 1084... instead of 84...
    shifted.write_text("".join(f"{line[:22]}{int(line[22:26]) + 1000:4d}{line[26:]}"
                               if line.startswith(("ATOM", "HETATM", "TER")) and line[22:26].strip() else line
                               for line in lines))
    summary = run_task(gen, "forecast", shifted, tiny_system["trajectory"], tmp_path / "fc.xtc", num_frames=3,
                       confidence=False)
    numbers = sorted({r.resSeq for r in mdtraj.load(summary["topology_pdb"]).topology.residues})
    assert numbers[0] == 1084 and 1099 in numbers and all(n > 1000 for n in numbers)


def test_no_confidence_skips_the_score_and_evaluate_copes(gen, tiny_system, tmp_path, monkeypatch):
    from hemeplm.evaluate.confidence import read_uncertainty
    from hemeplm.generate import sampler

    monkeypatch.setattr(sampler, "frame_uncertainty", lambda *a, **k: pytest.fail("scored"))
    summary = task(gen, tiny_system, tmp_path / "fc.xtc", "forecast", num_frames=3, confidence=False)
    assert "uncertainty_A" not in summary and summary["confidence"] == "not computed (--no-confidence)"
    assert summary["confidence_seconds"] is None
    assert json.loads((tmp_path / "fc.json").read_text()) == summary
    found, why = read_uncertainty([tmp_path / "fc.xtc"], [3])
    assert found is None and "has no uncertainty_A" in why


def test_noise_scale_narrows_forecasts_and_bad_values_are_refused(tiny_run, tiny_system, tmp_path):
    """sample.py --noise-scale: unset, the checkpoint's temperature (1) is used; a lower one gives raw forecast
    frames closer to their start on average; 0 or below is refused by the sampler and by the config."""
    from hemeplm.data.dataset import featurize

    gens = {tau: Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", noise_scale=tau, project_steps=0)
            for tau in (None, 0.3)}
    assert gens[None].temperature == 1.0 and gens[0.3].temperature == 0.3
    start = torch.as_tensor(featurize(gens[None].cfg.data)["segments"][0][0], dtype=torch.float32)
    moved = {tau: float((g.forecast(start, 5, 4, torch.Generator().manual_seed(0))[:, 1:] - start)
                        .norm(dim=-1).mean()) for tau, g in gens.items()}
    assert moved[0.3] < moved[None], moved
    for bad in (0.0, -1.0):
        with pytest.raises(HemeplmError, match="noise scale"):
            Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", noise_scale=bad)
    with pytest.raises(HemeplmError, match="fold hold must be a number of at least 0"):
        Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", fold_sigmas=-1.0)
    with pytest.raises(HemeplmError, match="diffusion.noise_scale"):
        tiny_config(tiny_system, tmp_path, "diffusion.noise_scale=0")


def test_restart_resamples_generated_frames_only_and_bad_levels_are_refused(tiny_run, tiny_system, tmp_path):
    """Restart sampling (``sample.py --restart``): unset, the checkpoint's (0.1); off (0), the raw forecast's
    generated frames change and its start frame does not; a level outside 0..1 is refused by the sampler and by
    the config."""
    from hemeplm.data.dataset import featurize

    gens = {r: Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", restart=r, project_steps=0)
            for r in (None, 0)}
    assert gens[None].restart_settings["restart"] == 0.1 and gens[0].restart_settings["restart"] == 0
    assert gens[None].denoiser_steps == 5 + 5 and gens[0].denoiser_steps == 5  # the tiny config: one restart
    start = torch.as_tensor(featurize(gens[None].cfg.data)["segments"][0][0], dtype=torch.float32)
    out = {r: g.forecast(start, 5, 2, torch.Generator().manual_seed(0)) for r, g in gens.items()}
    assert torch.equal(out[0][:, 0], out[None][:, 0])
    # restarting from 0.1 of the schedule changes the generated frames, by less than they moved from the start
    changed = float((out[0][:, 1:] - out[None][:, 1:]).norm(dim=-1).mean())
    assert 1e-3 < changed < 0.5 * float((out[0][:, 1:] - start).norm(dim=-1).mean()), changed
    for bad in (-0.1, 1.5, True):
        with pytest.raises(HemeplmError, match="restart level"):
            Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", restart=bad)
    with pytest.raises(HemeplmError, match="diffusion.restart"):
        tiny_config(tiny_system, tmp_path, "diffusion.restart=1.5")


def test_temperature_tool_compares_the_samplers_motion_with_the_mds(tiny_run, capsys):
    """``python tools/temperature.py``: the MD's step and displacement over validation windows, the raw network's at
    each noise scale (a lower scale moves atoms less), and a suggested scale among those tried."""
    tool = tool_module("temperature")
    gen = Sampler.from_checkpoint(tiny_run["ckpt"], device="cpu", project_steps=0)
    md, found = tool.measure(gen, [1.0, 0.3], 3, 0)
    assert all(v > 0 for v in md) and found[0.3][1] < found[1.0][1], (md, found)
    tool.main([str(tiny_run["run_dir"]), "--scales", "1", "0.3", "--windows", "3"])
    out = capsys.readouterr().out
    assert re.search(r"nearest the MD: noise scale (1|0\.3) ", out), out


def test_bfloat16_and_compiled_sampling_follow_the_float32_sampler(gen, frames, tiny_run):
    """GPU paths, run on the CPU: sampling under bfloat16 autocast and with the denoiser compiled by torch.compile
    give finite frames; compiled, the same frames as eager to float rounding; in bfloat16, frames close to them
    (its rounding, not another sampler); an unknown precision is refused."""
    start = torch.from_numpy(frames[3])
    plain = dataclasses.replace(gen, project_steps=0)
    eager = plain.forecast(start, 6, 2, torch.Generator().manual_seed(0))
    half = dataclasses.replace(plain, precision="bfloat16").forecast(start, 6, 2, torch.Generator().manual_seed(0))
    assert torch.isfinite(half).all() and not torch.equal(half, eager)
    assert float((half - eager).norm(dim=-1).mean()) < 0.5
    compiled = Sampler.from_checkpoint(tiny_run["ckpt"], project_steps=0, compile=True)
    fast = compiled.forecast(start, 6, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast, eager, atol=1e-3, rtol=0)
    with pytest.raises(HemeplmError, match="precision must be one of float32, bfloat16"):
        dataclasses.replace(gen, precision="float16")
