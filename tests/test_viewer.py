"""The HTML trajectory viewer, loaded in a real headless Chromium (software WebGL).

Chromium comes from Debian (``apt-get install chromium``; ``make test`` does it).
The page is opened with ``#frame=N``; its ``#status`` element reports the frame
shown and the first atom's coordinates as the 3D viewer holds them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from hemeplm.cli import main as cli_main
from hemeplm.errors import HemeplmError
from hemeplm.viewer import load_panel, read_values, superpose_panels, thin, write_view

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--disable-gpu-sandbox", "--virtual-time-budget=15000"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium not found: `make test` installs it (apt-get install -y chromium)"
    return subprocess.run([exe, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=120)


def status(page, frame: int) -> dict:
    proc = chromium("--dump-dom", f"{page.as_uri()}#frame={frame}")
    found = re.search(r'<pre id="status">(.*?)</pre>', proc.stdout, re.S)
    assert found and found.group(1), proc.stderr[-2000:]
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def page(tiny_system, tmp_path_factory):
    """A two-panel page: the tiny trajectory, and the same from its frame 10 as reference."""
    out = tmp_path_factory.mktemp("view") / "view.html"
    top, traj = str(tiny_system["topology"]), str(tiny_system["trajectory"])
    cli_main(["view", top, traj, "--reference", traj, "--reference-start", "10", "--out", str(out),
              "--timestep-ps", "2"])
    return out


def test_page_is_self_contained(page):
    html = page.read_text()
    assert "<script src" not in html and "<link" not in html  # nothing fetched at view time
    assert "$3Dmol" in html and 'id="slider"' in html and 'id="play"' in html
    assert page.stat().st_size < 2_000_000


def test_slider_frame_moves_the_atoms(page, tiny_system):
    top, traj = tiny_system["topology"], tiny_system["trajectory"]
    panels = superpose_panels([load_panel("a", top, traj, timestep_ps=2.0),
                               load_panel("b", top, traj, start=10, timestep_ps=2.0)])
    first, later = status(page, 0), status(page, 7)
    assert first["ready"] and first["frame"] == 0 and later["frame"] == 7
    assert later["time_ps"] == pytest.approx(14.0)
    for k, (p, shown) in enumerate(zip(panels, later["panels"])):
        assert shown["frame"] == 7
        np.testing.assert_allclose(shown["xyz"], p.xyz[7, 0], atol=1e-3)  # what the viewer draws is frame 7
        np.testing.assert_allclose(first["panels"][k]["xyz"], p.xyz[0, 0], atol=1e-3)
    assert np.abs(np.subtract(later["panels"][0]["xyz"], first["panels"][0]["xyz"])).max() > 0.05
    # the reference starts at trajectory frame 10, so its frame k is the other panel's frame k + 10
    np.testing.assert_allclose(later["panels"][1]["xyz"], panels[0].xyz[17, 0], atol=1e-3)
    beyond = status(page, 1000)  # past the end: the last frame
    assert beyond["frame"] == 39 and beyond["panels"][1]["frame"] == 29


def test_screenshot_shows_the_molecule(page, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    proc = chromium("--window-size=1200,700", f"--screenshot={shot}", f"{page.as_uri()}#frame=3")
    assert shot.exists(), proc.stderr[-2000:]
    rgb = imread(str(shot))[80:, :, :3]  # below the controls
    drawn = (np.abs(rgb - 1.0).max(axis=-1) > 0.1)  # not the white background
    assert drawn.mean() > 0.02, f"only {drawn.sum()} drawn pixels"
    # both panels draw: each half of the page has molecule pixels
    half = drawn.shape[1] // 2
    assert drawn[:, :half].sum() > 2000 and drawn[:, half:].sum() > 2000


def test_panels_share_one_time_axis(tiny_system, tmp_path):
    top, traj = tiny_system["topology"], tiny_system["trajectory"]
    fine = load_panel("fine", top, traj, timestep_ps=1.0)
    coarse = thin(load_panel("coarse", top, traj, timestep_ps=1.0), 10)  # every 4th frame
    assert len(coarse.xyz) == 10 and coarse.time_ps[1] == 4.0
    page = write_view(tmp_path / "v.html", [coarse, fine])
    shown = status(page, 6)  # the timeline is the longer-spanning panel's: t = 6 ps
    assert shown["time_ps"] == 6.0
    assert [p["frame"] for p in shown["panels"]] == [1, 6]  # the coarse panel's last frame at or before 6 ps


def test_values_from_files(tmp_path, tiny_system):
    n = len(load_panel("a", tiny_system["topology"], tiny_system["trajectory"]).ca)
    csv = tmp_path / "v.csv"
    csv.write_text("residue,value\n" + "".join(f"{k},{k * 0.5}\n" for k in range(n)))
    values, label = read_values(str(csv), n)
    np.testing.assert_allclose(values, np.arange(n) * 0.5)
    npz = tmp_path / "e.npz"
    np.savez(npz, residue_interaction_kcal_mol=np.arange(2 * n).reshape(2, n), other=np.zeros(3))
    values, label = read_values(f"{npz}:residue_interaction_kcal_mol", n)
    np.testing.assert_allclose(values, np.arange(n) + n / 2)  # averaged over frames
    assert label == "residue_interaction_kcal_mol"
    with pytest.raises(HemeplmError, match=re.escape(f"{npz}: name the array")):
        read_values(str(npz), n)
    with pytest.raises(HemeplmError, match=re.escape(f"{csv}: has (3,) values; the protein has {n} residues")):
        csv.write_text("1\n2\n3\n")
        read_values(str(csv), n)


def test_given_values_colour_the_page(tiny_system, tmp_path):
    panel = load_panel("a", tiny_system["topology"], tiny_system["trajectory"])
    csv = tmp_path / "v.csv"
    csv.write_text("".join(f"{k}\n" for k in range(len(panel.ca))))
    html = write_view(tmp_path / "v.html", [panel], str(csv)).read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert data["value_label"] == "v" and data["value_range"] == [0, len(panel.ca) - 1]
    assert data["panels"][0]["values"] == list(range(len(panel.ca)))


def test_sample_py_view(tiny_run, tiny_system, tmp_path):
    out = tmp_path / "fc.xtc"
    proc = subprocess.run([sys.executable, "sample.py", "--ckpt", str(tiny_run["ckpt"]), "--task", "forecast",
                           "--topology", str(tiny_system["topology"]), "--frames", str(tiny_system["trajectory"]),
                           "--start", "5", "--num-frames", "6", "--out", str(out), "--view"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["view"] == str(out.with_suffix(".html"))
    shown = status(out.with_suffix(".html"), 2)
    assert len(shown["panels"]) == 2  # the sample beside the given MD


def test_view_refuses_to_overwrite_without_force(tiny_system, tmp_path, capsys, monkeypatch):
    out = tmp_path / "v.html"
    out.write_text("mine")
    top, traj = str(tiny_system["topology"]), str(tiny_system["trajectory"])
    monkeypatch.setattr("hemeplm.viewer.load_panel", lambda *a, **k: pytest.fail("read the trajectories"))
    with pytest.raises(SystemExit) as info:
        cli_main(["view", top, traj, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err == f"hemeplm view: error: {out}: would overwrite {out}; pass --force to replace them"
    assert out.read_text() == "mine"
    monkeypatch.undo()
    cli_main(["view", top, traj, "--out", str(out), "--force", "--max-frames", "3"])
    assert out.read_text().startswith("<!doctype html>") and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    with pytest.raises(SystemExit):
        cli_main(["view", top, traj, "--out", str(out), "--max-frames", "0"])
    assert "argument --max-frames: must be at least 1, got 0" in capsys.readouterr().err
