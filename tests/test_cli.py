"""``hemeplm inspect``: the report on a heme protein, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import HEME_PDB, PRMTOP, ROOT, write_dcd

from hemeplm.cli import main


def test_inspect_heme_json(capsys):
    main(["inspect", str(HEME_PDB), "--ligand", "resname HEM", "--json"])
    report = json.loads(capsys.readouterr().out)
    lig = report["ligand"]
    assert lig["n_atoms"] == 774
    assert lig["residues"] == ["HEM"] * 18
    assert lig["elements"]["Fe"] == 18
    assert lig["elements"] == {"C": 612, "Fe": 18, "N": 72, "O": 72}
    assert report["n_frames"] == 1 and report["n_segments"] == 1 and report["n_residues"] > 0


def test_inspect_text(capsys, t4l_dcd):
    main(["inspect", str(PRMTOP), str(t4l_dcd)])
    out = capsys.readouterr().out.splitlines()
    assert "162 protein residues" in out[0] and "12 frames" in out[0]
    # the input's atoms and the model's (heavy atoms unless --hydrogens), not one number for both
    assert out[0].startswith(f"{PRMTOP}: 2621 atoms in the input, 1298 in the model (heavy atoms of protein and ligand)")
    main(["inspect", str(PRMTOP), str(t4l_dcd), "--hydrogens"])
    assert "2621 atoms in the input, 2621 in the model (protein and ligand atoms)" in capsys.readouterr().out
    assert out[1].startswith("ligand: 8 atoms in 1 residue(s) ['TMP']")


@pytest.mark.parametrize("args, words", [
    (["missing.pdb"], ["missing.pdb", "file not found"]),
    ([str(PRMTOP), "traj.xyzzy"], ["traj.xyzzy", "unknown trajectory format"]),
    ([str(HEME_PDB), "--ligand", "resname ((("], [str(HEME_PDB), "invalid ligand selection"]),
])
def test_inspect_bad_input(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "traj.xyzzy").write_text("?")
    with pytest.raises(SystemExit) as info:
        main(["inspect", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hemeplm inspect: error: ")
    for w in words:
        assert w in err


def test_inspect_json_stdout_is_json(t4l_dcd):
    """mdtraj's DCD reader prints to stdout from C; the JSON report must still parse."""
    proc = subprocess.run([sys.executable, "-m", "hemeplm.cli", "inspect", str(PRMTOP), str(t4l_dcd), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_frames"] == 12


def test_inspect_mismatch_subprocess(tmp_path, t4l_xyz):
    """Run as a program: exit code 2 and one line on stderr, no traceback."""
    short = write_dcd(tmp_path / "short.dcd", t4l_xyz[None, :100])
    proc = subprocess.run([sys.executable, "-m", "hemeplm.cli", "inspect", str(PRMTOP), str(short)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hemeplm")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(short) in lines[0] and "different number of atoms" in lines[0]


def test_version_and_help_name_defaults_and_the_scripts(capsys):
    from hemeplm import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"hemeplm {__version__}" != "hemeplm unknown"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "python train.py" in top and "python sample.py" in top
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "recorded MD steps (default: 50000)" in " ".join(capsys.readouterr().out.split())
    for script in ("sample.py", "train.py"):
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        text = " ".join(proc.stdout.split())
        assert proc.returncode == 0 and "(default: None)" not in text
        assert ("cuda or cuda:N (default: auto)" if script == "sample.py" else "(default: configs/demo.yaml)") in text


def test_hints_name_options_the_command_has(tiny_system, tmp_path, capsys):
    """A DCD cut mid-frame: the loader's advice (train.py's data.truncated=warn) becomes the command's own
    --truncated warn, which works."""
    cut = tmp_path / "cut.dcd"
    data = tiny_system["trajectory"].read_bytes()
    cut.write_bytes(data[:-100])
    for command in (["inspect", str(tiny_system["topology"]), str(cut)],
                    ["view", str(tiny_system["topology"]), str(cut), "--out", str(tmp_path / "v.html")]):
        with pytest.raises(SystemExit):
            main(command)
        err = capsys.readouterr().err
        assert "is truncated" in err and "pass --truncated warn" in err and "data.truncated" not in err
        main([*command, "--truncated", "warn"])
        assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "v.html").exists()


def test_energies_range_checked_before_anything_is_made(tiny_run, tiny_system, tmp_path, capsys):
    out = tmp_path / "energies"
    common = ["energies", "--ckpt", str(tiny_run["ckpt"]), "--topology", str(tiny_system["topology"]),
              "--frames", str(tiny_system["trajectory"]), "--out", str(out), "--quiet"]
    with pytest.raises(SystemExit) as info:
        main([*common, "--start", "500"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert err.endswith("--start 500 is out of range: it has 40 frames (0..39)")
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([*common, "--start", "-1"])
    assert "argument --start: must be at least 0, got -1" in capsys.readouterr().err
    main([*common, "--start", "30", "--stop", "35"])
    assert (out / "energies.npz").exists()


def test_commands_without_truncated_do_not_advise_it(tiny_system, tmp_path, capsys):
    cut = tmp_path / "cut.dcd"
    cut.write_bytes(tiny_system["trajectory"].read_bytes()[:-100])
    with pytest.raises(SystemExit):
        main(["relax", "--topology", str(tiny_system["topology"]), "--frames", str(cut), "--out",
              str(tmp_path / "r.xtc")])
    err = capsys.readouterr().err
    assert "is truncated" in err and "this command reads complete files only" in err and "data.truncated" not in err
