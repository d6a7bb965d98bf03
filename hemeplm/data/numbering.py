"""The user's residue numbering, kept from the input files to every PDB the package writes.

mdtraj numbers an Amber prmtop's residues from 0 and forgets PDB insertion codes. Here an
Amber topology gets its residue numbers (``RESIDUE_NUMBER``, else 1, 2, ... as Amber tools
print them) and chain IDs (``RESIDUE_CHAINID``) back, a PDB its insertion codes, and the
kept atoms are written once as PDB text (the checkpoint's ``topology_pdb``) from which every
output PDB is made by replacing coordinates only, so residue names, numbers, insertion codes,
chain IDs and atom names are the input's.
"""

from __future__ import annotations

import gzip
import re
import tempfile
from pathlib import Path

import numpy as np

from hemeplm.io import atomic_write_text

_FORMAT = re.compile(r"%FORMAT\((\d+)[aIE](\d+)")


def _prmtop_flags(path: Path, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Values of the ``%FLAG`` sections ``names`` of an Amber prmtop, as stripped strings."""
    found: dict[str, list[str]] = {}
    flag, width = None, 0
    with open(path) as fh:
        for line in fh:
            if line.startswith("%FLAG"):
                flag = line.split()[1] if line.split()[1] in names else None
                if flag:
                    found[flag] = []
            elif flag and line.startswith("%FORMAT"):
                width = int(_FORMAT.match(line).group(2))
            elif flag and not line.startswith("%"):
                text = line.rstrip("\n")
                found[flag] += [text[i:i + width].strip() for i in range(0, len(text), width)]
    return found


def number_amber_residues(topology, path: str | Path) -> None:
    """Give the residues of ``topology`` (read by mdtraj from the prmtop ``path``) the file's numbers
    (``RESIDUE_NUMBER``; without it 1, 2, ...) and each chain the ``RESIDUE_CHAINID`` of its first
    residue (mdtraj reads a prmtop as one chain), in place."""
    flags = _prmtop_flags(Path(path), ("RESIDUE_NUMBER", "RESIDUE_CHAINID"))
    numbers = flags.get("RESIDUE_NUMBER", [])
    chains = flags.get("RESIDUE_CHAINID", [])
    for i, residue in enumerate(topology.residues):
        residue.resSeq = int(numbers[i]) if len(numbers) == topology.n_residues else i + 1
    if len(chains) == topology.n_residues:
        for chain in topology.chains:
            chain.chain_id = chains[chain.residue(0).index]


def insertion_codes(path: str | Path, n_residues: int) -> list[str]:
    """(R,) insertion code of each residue (" " for none) of the topology file ``path``, in mdtraj's
    residue order; all " " unless ``path`` is a PDB that has them."""
    from mdtraj.formats.pdb.pdbstructure import PdbStructure

    p = Path(path)
    name = p.name.lower()
    if not name.endswith((".pdb", ".pdb.gz", ".ent")):
        return [" "] * n_residues
    with (gzip.open(p, "rt") if name.endswith(".gz") else open(p)) as fh:
        structure = PdbStructure(fh, load_all_models=False)
    codes = [residue.insertion_code or " " for chain in structure.iter_chains() for residue in chain.iter_residues()]
    return codes if len(codes) == n_residues else [" "] * n_residues


def kept_insertion_codes(path: str | Path, full_topology, source_index: np.ndarray, topology) -> list[str]:
    """(R,) insertion code of each residue of ``topology``, the atoms ``source_index`` kept from
    ``full_topology`` (read from the topology file ``path``), as :func:`insertion_codes` reads them."""
    codes = insertion_codes(path, full_topology.n_residues)
    return [codes[full_topology.atom(int(source_index[r.atom(0).index])).residue.index] for r in topology.residues]


def _is_atom(line: str) -> bool:
    return line.startswith(("ATOM  ", "HETATM"))


def topology_pdb(topology, xyz_a: np.ndarray, codes: list[str]) -> str:
    """PDB text of ``topology`` (A atoms) at ``xyz_a`` (A, 3) Å, with insertion codes ``codes`` (R,)."""
    import mdtraj

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "top.pdb"
        mdtraj.Trajectory(np.asarray(xyz_a, np.float32)[None] / 10.0, topology).save_pdb(str(path))
        lines = path.read_text().splitlines(keepends=True)
    residue = iter(codes[atom.residue.index] for atom in topology.atoms)
    code = " "
    for i, line in enumerate(lines):
        if _is_atom(line):
            code = next(residue)
        if _is_atom(line) or line.startswith("TER"):
            body = line.rstrip("\n").ljust(27)  # mdtraj's TER records end before column 27
            lines[i] = body[:26] + code + body[27:] + "\n"
    return "".join(lines)


def write_pdb(path: str | Path, template: str, xyz_a: np.ndarray) -> None:
    """Write the PDB text ``template`` (:func:`topology_pdb`, A atoms) with coordinates ``xyz_a`` (A, 3) Å
    (through a temporary file and a rename)."""
    xyz = iter(np.asarray(xyz_a, np.float64))
    lines = template.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if _is_atom(line):
            x, y, z = next(xyz)
            lines[i] = f"{line[:30]}{x:8.3f}{y:8.3f}{z:8.3f}{line[54:]}"
    atomic_write_text(path, "".join(lines))
