"""Bad input gives one HemeplmError naming the file and the problem, and caches nothing."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import PRMTOP, heme_pdb, write_dcd

from hemeplm.data.dataset import DataConfig, WindowDataset, featurize, window_starts
from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError


@contextlib.contextmanager
def _raises(path, *words):
    """Expect one HemeplmError, on one line, naming ``path`` and containing ``words``."""
    with pytest.raises(HemeplmError) as info:
        yield info
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    missing = tmp_path / "missing.dcd"
    with _raises(missing, "not found"):
        load_system(PRMTOP, [missing])
    with _raises(tmp_path / "missing.prmtop", "not found"):
        load_system(tmp_path / "missing.prmtop", [])


def test_unknown_format(tmp_path):
    bad = tmp_path / "traj.xyzzy"
    bad.write_text("not a trajectory")
    with _raises(bad, "unknown trajectory format", ".xyzzy"):
        load_system(PRMTOP, [bad])
    with _raises(bad, "unknown topology format"):
        load_system(bad, [])


def test_topology_without_coordinates():
    with _raises(PRMTOP, "no coordinates"):
        load_system(PRMTOP, [])


def test_atom_count_mismatch(tmp_path, t4l_xyz):
    short = write_dcd(tmp_path / "short.dcd", t4l_xyz[None, :2000])
    with _raises(short, "number of atoms", str(PRMTOP), "2621"):
        load_system(PRMTOP, [short])


def test_ligand_selection_matches_nothing(t4l_dcd):
    with _raises(PRMTOP, "resname XYZ", "matches no atom"):
        load_system(PRMTOP, [t4l_dcd], ligand="resname XYZ")
    with _raises(PRMTOP, "invalid ligand selection"):
        load_system(PRMTOP, [t4l_dcd], ligand="resname ((")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_frame(tmp_path, t4l_xyz, value):
    # XTC cannot hold NaN (its integer compression overflows), so DCD is used
    xyz = np.repeat(t4l_xyz[None], 3, axis=0)
    xyz[1, 7, 0] = value
    bad = write_dcd(tmp_path / "bad.dcd", xyz)
    with _raises(bad, "frame 1", "NaN or infinite"):
        load_system(PRMTOP, [bad])


def test_trajectory_shorter_than_window(t4l_dcd):
    cfg = DataConfig(window=5, lag=3)  # 13 frames per window; the trajectory has 12
    with _raises("short.xtc", "shorter than one window", "13 frames"):
        window_starts(cfg, [12], ["short.xtc"], "train")
    feats = {"segments": [np.zeros((12, 3, 3), np.float32)], "energies": [None], "forces": [None],
             "files": [str(t4l_dcd)]}
    with _raises(t4l_dcd, "shorter than one window"):
        WindowDataset(feats, cfg, "train")


def test_pdb_without_protein(tmp_path):
    hemes = heme_pdb(tmp_path / "hemes.pdb")
    with _raises(hemes, "no protein residues"):
        load_system(hemes, [], ligand="resname HEM")


def test_failed_load_caches_nothing(tmp_path, t4l_xyz):
    xyz = np.repeat(t4l_xyz[None], 3, axis=0)
    xyz[2, 0, 1] = np.nan
    bad = write_dcd(tmp_path / "bad.dcd", xyz)
    cache = tmp_path / "cache"
    with _raises(bad, "NaN"):
        featurize(DataConfig(topology=str(PRMTOP), trajectories=[str(bad)], cache_dir=str(cache)))
    assert not list(cache.glob("*.pt"))
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("value", [0, 15])
def test_ligand_group_out_of_range(tmp_path, t4l_dcd, value):
    cfg = DataConfig(topology=str(PRMTOP), trajectories=[str(t4l_dcd)], ligand_group=value,
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(HemeplmError, match=rf"data.ligand_group={value}: must be between 1 and the token width, 14"):
        featurize(cfg)
