"""tools/encoder_benchmark.py and tools/sampler_curve.py on the tiny system: what they time and score is there."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, tiny_config


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encoder_benchmark_times_both_encoders_at_the_same_settings(tiny_system, tmp_path):
    """Both encoders run on the same atoms at the config's width and depth, as sampling and as training run them."""
    bench = _tool("encoder_benchmark")
    cfg = tiny_config(tiny_system, tmp_path)
    row = bench.compare(cfg, frames=2, repeats=1)
    assert (row["atoms"], row["frames"], row["hidden"], row["layers"]) == (100, 2, 16, 1)
    assert row["parameters"]["ours"] > 0 and row["parameters"]["pyg_visnet"] > 0
    for name in ("inference", "training"):
        t = row[name]
        assert t["ours_s"] > 0 and t["pyg_visnet_s"] > 0
        assert t["speedup"] == pytest.approx(t["pyg_visnet_s"] / t["ours_s"])


def test_sampler_curve_scores_each_setting_raw_and_projected_beside_the_prior(tiny_run, tmp_path):
    """One row per setting: the model and its prior, raw and projected, scored on the held-out frames, with the
    projected model's wall time and rate; the table and the plot are written beside the JSON."""
    curve = _tool("sampler_curve")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").symlink_to(tiny_run["ckpt"])
    rows = curve.main([str(run), "--settings", "2:0", "1:1", "--samples", "1"])
    assert [(r["steps"], r["restarts"], r["denoiser_calls"]) for r in rows] == [(2, 0, 2), (1, 1, 1 + 5)]
    for r in rows:
        assert set(r["metrics"]) >= set(curve.WHO)
        assert r["wall_seconds"] > 0 and r["ns_per_hour"] == pytest.approx(
            (r["frames"] - 1) * r["lag_ps"] * 1e-3 / r["wall_seconds"] * 3600)
    out = run / "eval" / "sampler_curve"
    assert len(json.loads((out / "curve.json").read_text())) == 2
    assert (out / "curve.png").stat().st_size > 0 and "| 1 | ddim 2:0 |" in (out / "curve.md").read_text()
