"""What happens when training is killed, preempted or diverges, when files are corrupt, and when runs overlap.

Every run is a real ``train.py`` / ``sample.py`` / ``torchrun`` process on a tiny
system (the first 12 residues of T4 lysozyme plus p-xylene, a 40-frame noisy
DCD) and a tiny model, so that a step takes a fraction of a second. One
uninterrupted run (the ``reference`` fixture) is the yardstick: a run that is
killed or preempted and resumed must end with the very same weights and the
same loss curve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PDB, ROOT, write_dcd

from hemeplm.train.checkpoint import load_checkpoint, save_checkpoint
from hemeplm.config import load_config
from hemeplm.data.dataset import DataConfig, featurize
from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError
from hemeplm.train.loop import train

TINY_MODEL = ["encoder.hidden=16", "encoder.layers=1", "denoiser.dim=32", "denoiser.depth=1", "data.window=4",
              "diffusion.timesteps=100", "diffusion.sample_steps=3", "wandb.mode=disabled", "device=cpu",
              "data.ligand=resname TMP", "optim.batch_size=2", "eval_batches=1"]
#: 6 steps, a checkpoint every 2 (steps 0, 2, 4, 6), a metrics line every step
SCHEDULE = ["max_steps=6", "ckpt_every=2", "log_every=1", "eval_every=100"]


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> dict:
    """Tiny topology + 40-frame DCD, an empty config file and a feature cache already built."""
    import mdtraj

    root = tmp_path_factory.mktemp("reliability")
    full = mdtraj.load(str(PDB))
    tiny = full.atom_slice(full.topology.select("resid 0 to 11 or resname TMP"))
    pdb = root / "tiny.pdb"
    tiny.save_pdb(str(pdb))
    rng = np.random.default_rng(0)
    dcd = write_dcd(root / "tiny.dcd", tiny.xyz[0][None] + rng.normal(scale=0.02, size=(40, tiny.n_atoms, 3)))
    config = root / "empty.yaml"
    config.write_text("{}\n")
    data = [f"data.topology={pdb}", f"data.trajectories=[{dcd}]", f"data.cache_dir={root / 'cache'}"]
    featurize(load_config(config, TINY_MODEL + data).data)
    return {"root": root, "pdb": pdb, "dcd": dcd, "config": config, "data": data}


def overrides(system: dict, out_dir: Path, name: str, *extra: str) -> list[str]:
    return [*TINY_MODEL, *SCHEDULE, *system["data"], f"out_dir={out_dir}", f"name={name}", *extra]


def train_argv(system: dict, out_dir: Path, name: str, *extra: str, resume: bool = False) -> list[str]:
    return [sys.executable, "train.py", "--config", str(system["config"]), *(["--resume"] if resume else []),
            *overrides(system, out_dir, name, *extra)]


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A failed test leaves no process behind."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a process (in its own process group) in the repository root, stdout and stderr to ``log``.out/.err."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    _started.append(proc)
    return proc


def run(argv: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl, ignoring a last line still being written."""
    path = run_dir / "metrics.jsonl"
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path, timeout: float = 120) -> None:
    """Wait until ``proc`` has logged ``step`` (lines older than the process do not count)."""
    started = time.time()
    deadline = started + timeout
    while time.time() < deadline:
        if any(r["step"] >= step and r["time"] > started for r in records(run_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before step {step}: {Path(f'{log}.err').read_text()}")
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def curve(run_dir: Path) -> list[tuple]:
    """(step, metric, value) of every logged number, without wall-clock times."""
    return [(r["step"], k, v) for r in records(run_dir) for k, v in sorted(r.items()) if k not in ("step", "time")]


def assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["step"] == cb["step"]
    for key in ("model", "ema"):
        assert ca[key].keys() == cb[key].keys()
        for name, tensor in ca[key].items():
            assert torch.equal(tensor, cb[key][name]), f"{key}.{name} differs between {a} and {b}"


def error_line(proc: subprocess.CompletedProcess, program: str) -> str:
    """The one-line error a script printed last (no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program}: error: "), proc.stderr
    return last


@pytest.fixture(scope="module")
def reference(system, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run: its run directory."""
    out = tmp_path_factory.mktemp("reference")
    proc = run(train_argv(system, out, "ref"))
    assert proc.returncode == 0, proc.stderr
    return out / "ref"


# ---------------------------------------------------------------- killed, preempted

def test_same_seed_gives_bit_identical_checkpoints(system, reference, tmp_path):
    proc = run(train_argv(system, tmp_path, "again"))
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(reference / "ckpt.pt", tmp_path / "again" / "ckpt.pt")
    assert curve(tmp_path / "again") == curve(reference)


def test_sigkill_mid_step_then_resume_matches_uninterrupted_run(system, reference, tmp_path):
    log, run_dir = tmp_path / "killed", tmp_path / "run"
    proc = start(train_argv(system, tmp_path, "run"), log)
    wait_for_step(proc, run_dir, 3, log)  # step 4 is under way; the last checkpoint is step 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 2
    assert max(r["step"] for r in records(run_dir)) >= 3  # logged after the checkpoint: trained again

    resumed = run(train_argv(system, tmp_path, "run", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "at step 2" in resumed.stdout
    steps = [r["step"] for r in records(run_dir) if "train_loss" in r]
    assert steps == list(range(1, 7)), "a step is missing or logged twice"
    assert curve(run_dir) == curve(reference)
    assert_same_weights(reference / "ckpt.pt", run_dir / "ckpt.pt")


DRIVER = """
import io, runpy, sys, time
from pathlib import Path
import torch

real_save = torch.save

def slow_save(obj, f, *args, **kwargs):
    if not (isinstance(obj, dict) and obj.get("step", 0) > 0):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])  # half a checkpoint on disk, then hang until killed
    f.flush()
    marker.touch()
    time.sleep(600)

torch.save = slow_save
marker, sys.argv = Path(sys.argv[1]), ["train.py"] + sys.argv[2:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigkill_while_saving_keeps_previous_checkpoint(system, tmp_path):
    driver, marker, log = tmp_path / "driver.py", tmp_path / "saving", tmp_path / "log"
    driver.write_text(DRIVER)
    proc = start([sys.executable, str(driver), str(marker), *train_argv(system, tmp_path, "run")[2:]], log)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, Path(f"{log}.err").read_text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    run_dir = tmp_path / "run"
    assert (run_dir / ".ckpt.pt.tmp").exists()  # the half-written one never replaced the checkpoint
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 0
    resumed = run(train_argv(system, tmp_path, "run", "max_steps=2", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 2
    assert not (run_dir / ".ckpt.pt.tmp").exists()


def test_sigterm_saves_exits_zero_and_resumes(system, reference, tmp_path):
    log, run_dir = tmp_path / "term", tmp_path / "run"
    proc = start(train_argv(system, tmp_path, "run"), log)
    wait_for_step(proc, run_dir, 1, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, Path(f"{log}.err").read_text()
    out = Path(f"{log}.out").read_text()
    assert "stopped by signal at step" in out and "--resume" in out
    stopped = load_checkpoint(run_dir / "ckpt.pt")["step"]
    assert 1 <= stopped < 6 and f"at step {stopped};" in out
    assert max(r["step"] for r in records(run_dir)) == stopped

    resumed = run(train_argv(system, tmp_path, "run", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert curve(run_dir) == curve(reference)
    assert_same_weights(reference / "ckpt.pt", run_dir / "ckpt.pt")


# ---------------------------------------------------------------- corrupt files, out of disk

def corruptions(reference: Path, folder: Path) -> dict[str, Path]:
    good = (reference / "ckpt.pt").read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"truncated": good[: len(good) // 2], "garbage": np.random.default_rng(0).bytes(4096), "empty": b""}
    for name, data in files.items():
        (folder / f"{name}.pt").write_bytes(data)
    torch.save([1, 2, 3], folder / "list.pt")
    torch.save({"format_version": 99}, folder / "future.pt")
    return {p.stem: p for p in folder.glob("*.pt")}


def test_corrupt_checkpoint_is_a_one_line_error_naming_the_file(reference, tmp_path):
    for kind, path in corruptions(reference, tmp_path).items():
        with pytest.raises(HemeplmError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), kind


def test_scripts_exit_2_on_a_corrupt_checkpoint(system, reference, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ckpt.pt").write_bytes((reference / "ckpt.pt").read_bytes()[:5000])
    line = error_line(run(train_argv(system, tmp_path, "run", resume=True)), "train.py")
    assert str(run_dir / "ckpt.pt") in line and "truncated or corrupted" in line

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(1).bytes(10_000))
    proc = run([sys.executable, "sample.py", "--ckpt", str(garbage), "--task", "forecast", "--topology",
                str(system["pdb"]), "--frames", str(system["dcd"]), "--out", str(tmp_path / "s.dcd")])
    assert str(garbage) in error_line(proc, "sample.py")
    assert not (tmp_path / "s.dcd").exists()


def test_resume_with_a_different_model_is_a_clear_error(system, reference, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ckpt.pt").write_bytes((reference / "ckpt.pt").read_bytes())
    cfg = load_config(system["config"], overrides(system, tmp_path, "run", "denoiser.dim=48"))
    with pytest.raises(HemeplmError, match="does not fit this model") as info:
        train(cfg, resume=True)
    assert str(run_dir / "ckpt.pt") in str(info.value) and "\n" not in str(info.value)


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(HemeplmError, match="No space left on device") as info:
        save_checkpoint(path, {"step": 2})
    assert str(path) in str(info.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("fmt", ["dcd", "xtc"])
def test_truncated_trajectory_errors_or_warns_as_configured(system, tmp_path, fmt, caplog):
    import mdtraj

    frames = mdtraj.load(str(system["dcd"]), top=str(system["pdb"]))[:10]
    whole = tmp_path / f"whole.{fmt}"
    frames.save(str(whole))
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) - len(data) // 20])  # the last frame is cut in the middle

    with pytest.raises(HemeplmError, match="truncated: 9 complete frame") as info:
        load_system(system["pdb"], [cut])
    assert str(cut) in str(info.value) and "data.truncated=warn" in str(info.value)

    cfg = DataConfig(topology=str(system["pdb"]), trajectories=[str(cut)], cache_dir=str(tmp_path / "cache"),
                     truncated="warn")
    feats = featurize(cfg)
    assert len(feats["segments"][0]) == 9
    assert any("truncated" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    complete = load_system(system["pdb"], [whole]).segments[0][:9]
    np.testing.assert_allclose(feats["segments"][0], complete, atol=1e-5)


# ---------------------------------------------------------------- divergence

# ---------------------------------------------------------------- determinism and concurrency

def test_concurrent_samples_from_one_checkpoint_are_identical_per_seed(system, reference, tmp_path):
    import mdtraj

    def argv(name, seed):
        return [sys.executable, "sample.py", "--ckpt", str(reference / "ckpt.pt"), "--task", "forecast",
                "--topology", str(system["pdb"]), "--frames", str(system["dcd"]), "--num-frames", "5",
                "--seed", str(seed), "--out", str(tmp_path / f"{name}.dcd")]

    procs = {name: start(argv(name, seed), tmp_path / name) for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    for name, proc in procs.items():
        assert proc.wait(180) == 0, Path(f"{tmp_path / name}.err").read_text()
    xyz = {n: mdtraj.load(str(tmp_path / f"{n}.dcd"), top=str(tmp_path / f"{n}.pdb")).xyz for n in procs}
    assert xyz["a"].shape[0] == 5 and np.isfinite(xyz["a"]).all()
    np.testing.assert_array_equal(xyz["a"], xyz["b"])
    assert not np.array_equal(xyz["a"], xyz["c"])


def test_two_processes_building_the_feature_cache_at_once(system, tmp_path):
    cache = tmp_path / "cache"
    code = (f"import logging; logging.basicConfig(level=logging.INFO)\n"
            f"from hemeplm.data.dataset import DataConfig, featurize\n"
            f"featurize(DataConfig(topology={str(system['pdb'])!r}, trajectories=[{str(system['dcd'])!r}], "
            f"cache_dir={str(cache)!r}))\n")
    procs = [start([sys.executable, "-c", code], tmp_path / f"p{i}") for i in range(2)]
    assert [p.wait(180) for p in procs] == [0, 0]
    logs = "".join(Path(f"{tmp_path / f'p{i}'}.err").read_text() for i in range(2))
    assert logs.count("features cached in") == 1  # one built it, the other waited and read it
    [built] = cache.glob("*.pt")
    assert not list(cache.glob(".*.tmp"))
    feats = torch.load(built, weights_only=True)
    assert feats["segments"][0].shape[0] == 40


# ---------------------------------------------------------------- torchrun

def _torchrun_workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the workers that the torchrun process ``launcher`` started."""
    parents, env = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env[int(proc.name)] = (proc / "environ").read_bytes().split(b"\0")
        except (ValueError, OSError):
            continue
    below, todo = set(), [launcher]
    while todo:
        parent = todo.pop()
        children = [pid for pid, pp in parents.items() if pp == parent]
        below.update(children)
        todo += children
    return {int(kv[5:]): pid for pid in below for kv in env.get(pid, []) if kv.startswith(b"RANK=")}


@pytest.mark.slow  # torchrun training in step: test_train; SIGTERM stop, save and resume: above
def test_torchrun_rank_killed_then_preempted_then_resumed(system, tmp_path):
    """2 CPU ranks: SIGKILL of rank 1 ends the job; --resume restarts both from the checkpoint; SIGTERM to
    torchrun (preemption) makes the ranks stop at one step and save; --resume finishes the run."""
    run_dir, env = tmp_path / "ddp", {"OMP_NUM_THREADS": "1"}

    def torchrun(log: str, resume: bool) -> subprocess.Popen:
        return start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                      *train_argv(system, tmp_path, "ddp", "max_steps=8", "dist_timeout_s=30", resume=resume)[1:]], tmp_path / log, env)

    launcher = torchrun("killed", resume=False)
    wait_for_step(launcher, run_dir, 3, tmp_path / "killed")
    os.kill(_torchrun_workers(launcher.pid)[1], signal.SIGKILL)
    t0 = time.time()
    assert launcher.wait(90) != 0 and time.time() - t0 < 60
    err = (tmp_path / "killed.err").read_text()
    assert "ChildFailedError" in err and "SIGKILL" in err, err
    saved = load_checkpoint(run_dir / "ckpt.pt")["step"]
    assert saved in (2, 4)

    launcher = torchrun("preempted", resume=True)
    wait_for_step(launcher, run_dir, saved + 1, tmp_path / "preempted")
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(90)  # torchrun itself reports the signal (exit 1); its workers exit cleanly
    out = (tmp_path / "preempted.out").read_text()
    assert f"resumed {run_dir / 'ckpt.pt'} at step {saved}" in out
    stopped = load_checkpoint(run_dir / "ckpt.pt")["step"]
    assert saved < stopped < 8 and f"stopped by signal at step {stopped}" in out, out

    finished = torchrun("finished", resume=True)
    assert finished.wait(180) == 0, (tmp_path / "finished.err").read_text()
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 8
    assert [r["step"] for r in records(run_dir) if "train_loss" in r] == list(range(1, 9))
