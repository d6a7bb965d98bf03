"""The feature cache: a second call reads it; a changed option or input file rebuilds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PRMTOP, WritesMarker, write_dcd

from hemeplm.data import dataset
from hemeplm.data.dataset import DataConfig, cache_key, featurize
from hemeplm.errors import HemeplmError


@pytest.fixture
def cfg(tmp_path, t4l_frames) -> DataConfig:
    traj = write_dcd(tmp_path / "traj.dcd", t4l_frames[:4])
    return DataConfig(topology=str(PRMTOP), trajectories=[str(traj)], cache_dir=str(tmp_path / "cache"))


def test_second_call_reads_cache(cfg, monkeypatch):
    first = featurize(cfg)
    assert len(list(Path(cfg.cache_dir).glob("*.pt"))) == 1

    def no_build(_cfg):
        raise AssertionError("features rebuilt although the cache is valid")

    monkeypatch.setattr(dataset, "build_features", no_build)
    second = featurize(cfg)
    assert second.keys() == first.keys()
    assert isinstance(second["segments"][0], np.ndarray) and isinstance(second["layout"]["atom_index"], np.ndarray)
    np.testing.assert_array_equal(second["segments"][0], first["segments"][0])
    np.testing.assert_array_equal(second["layout"]["atom_index"], first["layout"]["atom_index"])
    np.testing.assert_array_equal(second["ligand_features"], first["ligand_features"])
    assert second["charge_source"] == first["charge_source"]


def test_changed_option_or_input_changes_key(cfg):
    key = cache_key(cfg)
    assert cache_key(DataConfig(**{**cfg.__dict__})) == key
    assert cache_key(DataConfig(**{**cfg.__dict__, "hydrogens": True})) != key
    assert cache_key(DataConfig(**{**cfg.__dict__, "ligand": "none"})) != key
    assert cache_key(DataConfig(**{**cfg.__dict__, "window": 3})) == key  # windows are cut after the cache
    traj = cfg.trajectories[0]
    st = os.stat(traj)
    os.utime(traj, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key(cfg) != key


def test_touched_input_rebuilds(cfg, t4l_frames):
    first = featurize(cfg)
    # same size, new content and mtime: the cache must not serve the old frames
    write_dcd(Path(cfg.trajectories[0]), t4l_frames[4:8])
    st = os.stat(cfg.trajectories[0])
    os.utime(cfg.trajectories[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = featurize(cfg)
    assert len(list(Path(cfg.cache_dir).glob("*.pt"))) == 2
    assert not np.allclose(second["segments"][0][1:], first["segments"][0][1:])


def test_cache_with_code_in_it_is_refused_unrun(cfg, tmp_path):
    featurize(cfg)
    [path] = Path(cfg.cache_dir).glob("*.pt")
    marker = tmp_path / "marker"
    torch.save({**torch.load(path, weights_only=True), "files": [WritesMarker(marker)]}, path)
    with pytest.raises(HemeplmError, match=rf"{path}: refused: this feature cache holds Python objects .*"
                                           "delete it and it is rebuilt"):
        featurize(cfg)
    assert not marker.exists()
