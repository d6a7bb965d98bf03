"""sample.py: the four tasks from a tiny checkpoint, output files, seeds, and clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
from conftest import PRMTOP, ROOT

from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError
from hemeplm.sampling import Generator, run_task


@pytest.fixture(scope="module")
def gen(tiny_run) -> Generator:
    return Generator.from_checkpoint(tiny_run["ckpt"])


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
    assert sample_py(*argv, "--force", "--seed", "1").returncode == 0
    assert not np.allclose(read(out), xyz, atol=1e-3)  # another seed, another trajectory


def test_tps_coarse_to_fine(gen, tiny_system, frames, tmp_path):
    out = tmp_path / "tps.dcd"
    summary = task(gen, tiny_system, out, "tps", start=2, end=30, num_frames=12)
    xyz = read(out)
    assert summary["num_frames"] == 12 and xyz.shape[0] == 12  # 5 frames, then 4 x 4 + 1 = 17, resampled to 12
    np.testing.assert_allclose(xyz[0], frames[2], atol=1e-4)
    np.testing.assert_allclose(xyz[-1], frames[30], atol=1e-4)
    assert (np.abs(xyz[1:-1] - frames[2]).max(axis=(1, 2)) > 0.05).all()


def test_upsample_keeps_every_kth_frame(gen, tiny_system, frames, tmp_path):
    out = tmp_path / "fine.dcd"
    k = gen.cfg.tasks.upsample_factor
    summary = task(gen, tiny_system, out, "upsample", start=4, end=8)  # 5 coarse frames
    xyz = read(out)
    assert xyz.shape[0] == summary["num_frames"] == (5 - 1) * k + 1
    np.testing.assert_allclose(xyz[::k], frames[4:9], atol=1e-4)


def test_inpaint_keeps_the_protein(gen, tiny_system, frames, tmp_path):
    out = tmp_path / "inpaint.dcd"
    summary = task(gen, tiny_system, out, "inpaint", start=5, end=13)
    xyz = read(out)
    lig = gen.model.s_is_ligand.numpy()
    assert xyz.shape[0] == summary["num_frames"] == 9
    np.testing.assert_allclose(xyz[:, ~lig], frames[5:14, ~lig], atol=1e-4)
    assert (np.abs(xyz[:, lig] - frames[5:14, lig]).max(axis=(1, 2)) > 0.05).all()
    # a selection of ligand atoms: only those move
    out2 = tmp_path / "inpaint_part.dcd"
    task(gen, tiny_system, out2, "inpaint", start=5, end=13, inpaint_atoms="resname TMP and name C1 C2")
    part = read(out2)
    moved = np.abs(part - frames[5:14]).max(axis=(0, 2)) > 1e-3
    names = [a.name for a in gen.model.topology().atoms]
    assert [names[i] for i in np.nonzero(moved)[0]] == ["C1", "C2"]


def test_time_between_output_frames(gen, tiny_system, tmp_path):
    """Forecasts step by the model's frame spacing; inpainting keeps the input's, upsampling divides it by k."""
    given = mdtraj.load(str(tiny_system["trajectory"]), top=str(tiny_system["topology"]))[:9]
    given.time = np.arange(9) * 5.0
    given.save_xtc(str(tmp_path / "every5ps.xtc"))
    trained = load_system(tiny_system["topology"], [tiny_system["trajectory"]]).timestep_ps
    assert trained != 5.0 and gen.model.static_info["timestep_ps"] == trained
    cfg = copy.deepcopy(gen.cfg)
    cfg.data.lag = 3  # as if trained on every third frame
    lagged = dataclasses.replace(gen, cfg=cfg)
    expected = {"forecast": 3 * trained, "inpaint": 5.0, "upsample": 5.0 / cfg.tasks.upsample_factor}
    for name, dt in expected.items():
        out = tmp_path / f"{name}.xtc"
        summary = run_task(lagged, name, tiny_system["topology"], tmp_path / "every5ps.xtc", out, num_frames=6)
        assert summary["timestep_ps"] == pytest.approx(dt), name
        traj = mdtraj.load(str(out), top=str(out.with_suffix(".pdb")))
        np.testing.assert_allclose(traj.time, np.arange(traj.n_frames) * dt, atol=1e-3)


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
    ("tps", {"end": -41}, r"tiny\.dcd: end frame -41 is out of range \(the file has 40 frames\)"),
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
