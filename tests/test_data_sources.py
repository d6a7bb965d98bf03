"""Partial charges read by OpenMM (prmtop, CHAMBER prmtop, PSF, GRO) and frame times (DCD, overrides, segments)."""

from __future__ import annotations

import json
import logging
import re

import mdtraj
import numpy as np
import pytest
from conftest import PRMTOP, write_dcd

from hemeplm.cli import main as cli_main
from hemeplm.data.dataset import DataConfig, build_features
from hemeplm.data.load import load_system
from hemeplm.data.parameters import read_charges
from hemeplm.errors import HemeplmError


def amber_charges(path) -> np.ndarray:
    """The CHARGE section of a prmtop, in e (Amber stores 18.2223 × e)."""
    text = path.read_text().split("%FLAG CHARGE")[1].split("%FLAG")[0]
    return np.array([float(v) for v in text.splitlines()[2:] for v in v.split()]) / 18.2223


def test_prmtop_charges(tmp_path):
    plain = read_charges(PRMTOP)
    np.testing.assert_allclose(plain, amber_charges(PRMTOP), atol=1e-6)
    assert abs(plain.sum() - round(plain.sum())) < 1e-3  # a whole net charge
    chamber = tmp_path / "chamber.prmtop"
    chamber.write_text(PRMTOP.read_text().replace(
        "%FLAG CHARGE" + " " * 68 + "\n", "%FLAG CHARGE" + " " * 68 + "\n%COMMENT Atomic charge multiplied by "
        "sqrt(332.0716D0) (CCELEC)\n", 1))
    assert "%COMMENT Atomic charge" in chamber.read_text()
    np.testing.assert_array_equal(read_charges(chamber), plain)


def write_psf(path, topology, charges: np.ndarray) -> None:
    """A minimal CHARMM PSF (atoms with ``charges``, bonds) of an mdtraj topology."""
    lines = ["PSF", "", "       1 !NTITLE", " REMARKS test", "", f"{topology.n_atoms:8d} !NATOM"]
    for a, q in zip(topology.atoms, charges):
        mass = a.element.mass if a.element is not None else 12.0
        lines.append(f"{a.index + 1:8d} P    {a.residue.resSeq:<4d} {a.residue.name:<4} {a.name:<4} "
                     f"{a.element.symbol:<4} {q:10.6f} {mass:13.4f}           0")
    bonds = [(a.index + 1, b.index + 1) for a, b in topology.bonds]
    lines += ["", f"{len(bonds):8d} !NBOND: bonds"]
    flat = [v for pair in bonds for v in pair]
    lines += ["".join(f"{v:8d}" for v in flat[k:k + 8]) for k in range(0, len(flat), 8)]
    for section in ("NTHETA: angles", "NPHI: dihedrals", "NIMPHI: impropers", "NDON: donors",
                    "NACC: acceptors"):
        lines += ["", f"{0:8d} !{section}"]
    lines += ["", f"{0:8d} !NNB", ""]
    lines += ["".join(f"{0:8d}" for _ in range(min(8, topology.n_atoms - k))) for k in range(0, topology.n_atoms, 8)]
    lines += ["", f"{1:8d}{0:8d} !NGRP NST2", f"{0:8d}{0:8d}{0:8d}", ""]
    path.write_text("\n".join(lines) + "\n")


def test_psf_charges_need_no_parameter_files(tiny_system, tmp_path):
    top = mdtraj.load_topology(str(tiny_system["topology"]))
    charges = np.round(np.random.default_rng(0).normal(scale=0.3, size=top.n_atoms), 4)
    psf = tmp_path / "tiny.psf"
    write_psf(psf, top, charges)
    np.testing.assert_allclose(read_charges(psf), charges, atol=1e-6)
    system = load_system(psf, [tiny_system["trajectory"]], ligand="resname TMP")
    np.testing.assert_allclose(system.full_charges, charges, atol=1e-6)
    # heavy atoms only: each hydrogen's charge is folded onto its heavy atom, so the total is kept
    assert system.charges.sum() == pytest.approx(charges.sum(), abs=1e-6)


def test_gro_has_no_charges(tiny_system, tmp_path, caplog):
    gro = tmp_path / "tiny.gro"
    mdtraj.load(str(tiny_system["topology"])).save_gro(str(gro))
    assert read_charges(gro) is None
    cfg = DataConfig(topology=str(gro), trajectories=[str(tiny_system["trajectory"])], ligand="resname TMP",
                     timestep_ps=1.0)
    with caplog.at_level(logging.WARNING):
        feats = build_features(cfg)
    assert f"{gro}: no partial charges: charge features are zero" in caplog.text
    assert not feats["charge"][~feats["is_ligand"]].any()
    assert feats["charge"][feats["is_ligand"]].any()  # the ligand's from Gasteiger


@pytest.fixture()
def frames(tiny_system) -> np.ndarray:
    """(F, A, 3) nm: the tiny trajectory."""
    return mdtraj.load(str(tiny_system["trajectory"]), top=str(tiny_system["topology"])).xyz


def test_dcd_has_no_time(tiny_system, tmp_path, frames, caplog):
    dcd = write_dcd(tmp_path / "a.dcd", frames)
    with caplog.at_level(logging.WARNING):
        assert load_system(tiny_system["topology"], [dcd]).timestep_ps == 1.0
    assert f"{dcd}: holds no frame times (a DCD); frames taken as 1 ps apart" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_system(tiny_system["topology"], [dcd], timestep_ps=2.5).timestep_ps == 2.5
    assert "frame times" not in caplog.text
    feats = build_features(DataConfig(topology=str(tiny_system["topology"]), trajectories=[str(dcd)],
                                      ligand="resname TMP", timestep_ps=2.5))
    assert feats["timestep_ps"] == 2.5


def test_energy_file_times_serve_a_dcd(tiny_system, tmp_path, frames, caplog):
    dcd = write_dcd(tmp_path / "traj.dcd", frames)
    n = len(frames)
    np.savez(tmp_path / "energies_forces.npz", time_ps=4.0 * np.arange(1, n + 1), energy_kcal_mol=np.zeros(n),
             forces_kcal_mol_A=np.zeros((n, frames.shape[1], 3)))
    with caplog.at_level(logging.WARNING):
        assert load_system(tiny_system["topology"], [dcd]).timestep_ps == 4.0
    assert "frame times" not in caplog.text


def test_segments_must_agree(tiny_system, tmp_path, frames, caplog):
    top = mdtraj.load_topology(str(tiny_system["topology"]))
    xtc = tmp_path / "b.xtc"
    mdtraj.Trajectory(frames, top, time=2.0 * np.arange(1, len(frames) + 1)).save_xtc(str(xtc))
    assert load_system(tiny_system["topology"], [xtc]).timestep_ps == pytest.approx(2.0)
    indexed = tmp_path / "c.xtc"
    mdtraj.Trajectory(frames, top, time=np.arange(len(frames), dtype=float)).save_xtc(str(indexed))
    with caplog.at_level(logging.WARNING):
        load_system(tiny_system["topology"], [indexed])
    assert f"{indexed}: holds no frame times (its times are the frame indices)" in caplog.text
    dcd = write_dcd(tmp_path / "a.dcd", frames)
    with pytest.raises(HemeplmError, match=re.escape(f"different frame spacings ({xtc}: 2 ps, {dcd}: 1 ps)")):
        load_system(tiny_system["topology"], [xtc, dcd])
    assert load_system(tiny_system["topology"], [xtc, dcd], timestep_ps=2.0).timestep_ps == 2.0
    with pytest.raises(HemeplmError, match="data.timestep_ps must be positive"):
        load_system(tiny_system["topology"], [xtc], timestep_ps=0.0)


def test_inspect_timestep_option(tiny_system, tmp_path, frames, capsys):
    dcd = write_dcd(tmp_path / "a.dcd", frames)
    cli_main(["inspect", str(tiny_system["topology"]), str(dcd), "--timestep-ps", "5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["timestep_ps"] == 5.0 and report["has_charges"] is False
