"""Residue numbers, insertion codes, chain IDs and names of the input survive into every PDB written."""

from __future__ import annotations

import mdtraj
import numpy as np
from conftest import PDB, PRMTOP

from hemeplm.data.dataset import DataConfig, build_features
from hemeplm.data.load import load_topology
from hemeplm.data.numbering import topology_pdb
from hemeplm.generate.sampler import Sampler, run_task


def residues(pdb_text: str) -> list[tuple[str, str, str, str]]:
    """(chain, resSeq, insertion code, residue name) of each residue of PDB text, in order."""
    out = []
    for line in pdb_text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            res = (line[21], line[22:26].strip(), line[26], line[17:20].strip())
            if not out or out[-1] != res:
                out.append(res)
    return out


def test_prmtop_residues_keep_amber_numbers(t4l_features):
    amber = load_topology(PRMTOP)
    pdb = mdtraj.load_topology(str(PDB))
    assert [r.resSeq for r in amber.residues] == [r.resSeq for r in pdb.residues] == list(range(1, 164))
    assert str(amber.residue(98)) == "ALA99"
    kept = residues(t4l_features["topology_pdb"])  # what a checkpoint trained on the prmtop writes
    assert [int(r[1]) for r in kept] == list(range(1, 164)) and kept[98][1:] == ("99", " ", "ALA")


def test_sampled_pdb_keeps_the_input_residues(tiny_run, tiny_system, tmp_path):
    summary = run_task(Sampler.from_checkpoint(tiny_run["ckpt"]), "forecast", tiny_system["topology"],
                       tiny_system["trajectory"], tmp_path / "fc.xtc", start=2, num_frames=3)
    given = residues(tiny_system["topology"].read_text())
    written = (tmp_path / "fc.pdb").read_text()
    assert residues(written) == given
    assert given[0][:2] == ("A", "84") and ("A", "99", " ", "ALA") in given
    first = mdtraj.load(str(tmp_path / "fc.xtc"), top=summary["topology_pdb"]).xyz[0] * 10.0
    np.testing.assert_allclose(mdtraj.load(str(tmp_path / "fc.pdb")).xyz[0] * 10.0, first, atol=6e-3)  # XTC keeps 0.01 Å


def test_insertion_codes_reach_the_checkpoint_topology(tiny_system, tmp_path):
    lines = tiny_system["topology"].read_text().splitlines(keepends=True)
    coded = [line[:26] + "A" + line[27:] if line.startswith(("ATOM", "HETATM")) and line[22:26] == "  86" else line
             for line in lines]
    path = tmp_path / "coded.pdb"
    path.write_text("".join(coded))
    feats = build_features(DataConfig(topology=str(path), trajectories=[], ligand="resname TMP"))
    kept = residues(feats["topology_pdb"])
    assert kept == [(c, n, "A" if n == "86" else " ", name) for c, n, _, name in residues(path.read_text())]


def test_topology_pdb_keeps_every_record_of_several_chains(tmp_path):
    full = mdtraj.load(str(PDB))
    part = [full.atom_slice(full.topology.select(f"resid {a} to {a + 9}")) for a in (0, 20)]
    two = part[0].stack(part[1])  # two chains, two TER records
    codes = [" "] * 10 + ["B"] * 10
    text = topology_pdb(two.topology, two.xyz[0] * 10.0, codes)
    assert all(line[:6].strip() in {"ATOM", "HETATM", "TER", "CONECT", "END", "REMARK", "CRYST1", "MODEL", "ENDMDL"}
               for line in text.splitlines()), "a record was glued onto another"
    assert sum(line.startswith("TER") for line in text.splitlines()) == 2
    path = tmp_path / "two.pdb"
    path.write_text(text)
    back = mdtraj.load(str(path))
    assert back.n_atoms == two.n_atoms and back.topology.n_chains == 2
    np.testing.assert_allclose(back.xyz[0] * 10.0, two.xyz[0] * 10.0, atol=1e-3)
    assert [r[2] for r in residues(text)] == codes
