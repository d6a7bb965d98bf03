"""tools/qm_benchmark.py: both models train through the same loop on a shipped data set and are scored on
its test block beside the training mean (a few steps only: the script's machinery, not its numbers)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT

pytest.importorskip("torch_geometric")


def test_benchmark_rows_for_both_models_and_the_mean():
    spec = importlib.util.spec_from_file_location("qm_benchmark", ROOT / "tools" / "qm_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.benchmark(["ethanol"], seconds=30.0, max_steps=2)
    assert [r["model"] for r in rows] == ["training mean", "HemePLM molecular", "PyG ViSNet"]
    assert all(r["test_frames"] == 200 and r["train_frames"] == 1000 for r in rows)
    assert [r["steps"] for r in rows] == [0, 2, 2] and all(r["ms_per_frame"] > 0 for r in rows[1:])
    assert rows[0]["force_mae"] > 10.0 and all(r["energy_mae"] > 0 for r in rows)
