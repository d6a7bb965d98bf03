"""Windows stay inside one segment and one chronological split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PRMTOP, write_dcd

from hemeplm.data.dataset import SPLITS, DataConfig, LabelledFrames, WindowDataset, build_features, split_bounds, window_starts
from hemeplm.errors import HemeplmError


def _frames(cfg: DataConfig, start: int, lag: int | None = None) -> set[int]:
    lag = cfg.lag if lag is None else lag
    return set(range(start, start + (cfg.window - 1) * lag + 1, lag))


@pytest.mark.parametrize("window, lag, stride", [(4, 1, 1), (3, 2, 1), (5, 3, 2)])
def test_windows_stay_in_segment_and_split(window, lag, stride):
    cfg = DataConfig(window=window, lag=lag, stride=stride)
    lengths = [40, 23]
    used = {split: [] for split in SPLITS}
    for split in SPLITS:
        for seg, start, _ in window_starts(cfg, lengths, ["a.dcd", "b.dcd"], split):
            frames = _frames(cfg, start)
            lo, hi = split_bounds(lengths[seg], cfg.split)[SPLITS.index(split)]
            assert lo <= min(frames) and max(frames) < hi <= lengths[seg]
            used[split].append((seg, frames))
    for seg in range(len(lengths)):
        sets = {s: set().union(*[f for g, f in used[s] if g == seg]) for s in SPLITS}
        assert sets["train"], "every segment has training windows"
        assert not sets["train"] & sets["val"] and not sets["val"] & sets["test"] and not sets["train"] & sets["test"]
        if sets["val"]:
            assert max(sets["train"]) < min(sets["val"])
        if sets["val"] and sets["test"]:
            assert max(sets["val"]) < min(sets["test"])
    if (window, lag, stride) == (4, 1, 1):  # short enough that every split has windows: the checks above ran
        assert window_starts(cfg, lengths, ["a.dcd", "b.dcd"], "val") == [(0, 28, 1), (0, 29, 1), (0, 30, 1),
                                                                          (1, 16, 1)]
        assert window_starts(cfg, lengths, ["a.dcd", "b.dcd"], "test") == [(0, 34, 1), (0, 35, 1), (0, 36, 1)]


def test_several_lags_cut_windows_at_each_inside_the_split():
    """data.lags adds windows at each further lag, frames that far apart, inside the same split; a lag whose window
    is longer than a split has none there (no error), while a segment too short for data.lag itself is refused."""
    cfg = DataConfig(window=4, lag=1, lags=[3, 10], split=[0.7, 0.3, 0.0])
    lengths = [40, 12]
    assert cfg.training_lags == [1, 3, 10]
    found = window_starts(cfg, lengths, ["a.dcd", "b.dcd"], "train")
    lags = {lag: [(seg, start) for seg, start, g in found if g == lag] for lag in cfg.training_lags}
    assert lags[1] and lags[3] and not lags[10]  # 31 frames: more than the 28 training frames of a: no lag-10 window
    for seg, start, lag in found:
        frames = _frames(cfg, start, lag)
        assert max(frames) < split_bounds(lengths[seg], cfg.split)[0][1] and len(frames) == cfg.window
    assert {(s, lag) for s, _, lag in found} == {(0, 1), (0, 3), (1, 1)}  # 8 training frames of b: lag 1 only
    with pytest.raises(HemeplmError, match="shorter than one window"):
        window_starts(cfg, [3], ["c.dcd"], "train")


def test_split_bounds_chronological():
    assert split_bounds(100, [0.7, 0.15, 0.15]) == [(0, 70), (70, 85), (85, 100)]
    with pytest.raises(HemeplmError, match="data.split"):
        split_bounds(100, [0.5, 0.5])


def test_two_files_are_two_segments(tmp_path, t4l_frames):
    a = write_dcd(tmp_path / "a.dcd", t4l_frames[:7])
    b = write_dcd(tmp_path / "b.dcd", t4l_frames[7:])
    cfg = DataConfig(topology=str(PRMTOP), trajectories=[str(a), str(b)], window=3, lag=1, split=[1.0, 0.0, 0.0])
    feats = build_features(cfg)
    assert [len(s) for s in feats["segments"]] == [7, 5]
    assert feats["files"] == [str(a), str(b)]
    ds = WindowDataset(feats, cfg, "train")
    assert len(ds) == (7 - 2) + (5 - 2)  # no window joins the end of a.dcd to the start of b.dcd
    for i in range(len(ds)):
        item = ds[i]
        seg, start = int(item["segment"]), int(item["start"])
        assert start + cfg.window <= len(feats["segments"][seg])
        assert torch.equal(item["coords"], torch.from_numpy(feats["segments"][seg][start:start + cfg.window]))
        assert item["coords"].shape == (cfg.window, feats["n_atoms"], 3)
    assert len(LabelledFrames(feats, cfg, "train")) == 0  # no energies_forces.npz beside these files
    # both segments are superposed on the same reference: frame 0 of b is close to frame 0 of a
    ca = np.array([i for i, n in enumerate(feats["atom_names"]) if n == "CA"])
    rmsd = np.sqrt(((feats["segments"][1][0, ca] - feats["segments"][0][0, ca]) ** 2).sum(-1).mean())
    assert rmsd < 1.0
