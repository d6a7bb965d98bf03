"""Small molecules and peptides built from nothing downloaded, and the molecule data sets' files.

:func:`build_molecule` makes one of :data:`MOLECULES` with every hydrogen:

* ethanol, propane, acetone and p-xylene from SMILES with RDKit (ETKDG embedding, MMFF
  geometry), one residue ``MOL``;
* alanine dipeptide (ACE-ALA-NME) and chignolin (GYDPETGTWG, charged termini) from their sequence
  with PeptideBuilder (extended backbone), hydrogens added by OpenMM's Modeller for Amber14
  (ff14SB) at pH 7; caps are made from flanking glycines (their Cα becomes the methyl carbon).

A data set folder (written by :func:`hemeplm.forcefield.qm.make_dataset`) holds ``topology.pdb``,
``traj.dcd`` (all frames, float32 Å: XTC would round coordinates to 0.01 Å, too coarse for force
labels), ``energies_forces.npz`` (``energy_kcal_mol`` (F,), ``forces_kcal_mol_A`` (F, A, 3),
``time_ps``, ``temperature_K``, ``run`` (F,) and ``split`` (F,) with :data:`SPLITS` codes) and
``dataset.json``; :func:`read_dataset` reads it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemeplm.data.load import ENERGY_FILE
from hemeplm.data.parameters import pair_parameters
from hemeplm.errors import HemeplmError

#: name -> ("smiles", SMILES) or ("peptide", one-letter sequence, capped)
MOLECULES: dict[str, tuple] = {
    "ethanol": ("smiles", "CCO"),
    "propane": ("smiles", "CCC"),
    "acetone": ("smiles", "CC(=O)C"),
    "p-xylene": ("smiles", "Cc1ccc(C)cc1"),
    "alanine-dipeptide": ("peptide", "A", True),
    "chignolin": ("peptide", "GYDPETGTWG", False),
}
SMALL = ("ethanol", "propane", "acetone", "p-xylene")
PEPTIDES = ("alanine-dipeptide", "chignolin")
#: fragment sets (:func:`hemeplm.forcefield.fragmentation.make_fragment_datasets`): name -> the peptide cut up
FRAGMENT_SETS = {"chignolin-fragments": "chignolin"}


def set_of(molecule: str) -> str:
    """The data set name (``qm.molecule`` entry) a data set's ``molecule`` belongs to: itself, or for a fragment
    (``chignolin-fragments/ACE-TYR2-NME``) its fragment set."""
    return molecule.split("/")[0]


#: codes of the ``split`` array: contiguous time blocks of every run
SPLITS = ("train", "val", "test")
DATASET_FILES = ("topology.pdb", "traj.dcd", ENERGY_FILE, "dataset.json")


@dataclass
class Molecule:
    """One molecule with hydrogens.

    Attributes (A atoms):
        name: a key of :data:`MOLECULES`.
        topology: mdtraj Topology (residues, atom names, elements, bonds).
        positions: (A, 3) Å, a reasonable starting geometry.
        numbers: (A,) atomic numbers.
        charge: total formal charge (e).
        source: the SMILES or sequence it was built from.
    """

    name: str
    topology: object
    positions: np.ndarray
    numbers: np.ndarray
    charge: int
    source: str

    def save_pdb(self, path: str | Path, positions: np.ndarray | None = None) -> None:
        """Write the molecule (or ``positions`` (A, 3) Å) as a PDB with CONECT records."""
        import mdtraj

        xyz = (self.positions if positions is None else positions)[None] / 10.0
        mdtraj.Trajectory(xyz.astype(np.float32), self.topology).save_pdb(str(path))


def build_molecule(name: str, seed: int = 0) -> Molecule:
    """Build molecule ``name`` (a key of :data:`MOLECULES`) with hydrogens; ``seed`` fixes RDKit's embedding."""
    if name not in MOLECULES:
        raise HemeplmError(f"unknown molecule {name!r}; known: {', '.join(MOLECULES)}")
    kind, source, *rest = MOLECULES[name]
    if kind == "smiles":
        return from_smiles(name, source, seed)
    return from_sequence(name, source, capped=rest[0])


def from_smiles(name: str, smiles: str, seed: int = 0) -> Molecule:
    """A molecule from SMILES: RDKit with hydrogens, ETKDG conformer, MMFF-optimised; one residue ``MOL``."""
    import mdtraj
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise HemeplmError(f"RDKit cannot read SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise HemeplmError(f"RDKit cannot embed {smiles!r} in 3D")
    AllChem.MMFFOptimizeMolecule(mol)
    top = mdtraj.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    counts: dict[str, int] = {}
    atoms = []
    for a in mol.GetAtoms():
        sym = a.GetSymbol()
        counts[sym] = counts.get(sym, 0) + 1
        atoms.append(top.add_atom(f"{sym}{counts[sym]}", mdtraj.element.get_by_symbol(sym), residue))
    for b in mol.GetBonds():
        top.add_bond(atoms[b.GetBeginAtomIdx()], atoms[b.GetEndAtomIdx()])
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return Molecule(name, top, mol.GetConformer().GetPositions(), numbers, Chem.GetFormalCharge(mol), smiles)


def _capped_pdb(pdb_text: str) -> str:
    """PDB of G-X...-G with the first glycine made ACE (its Cα the methyl ``CH3``, N dropped) and the last
    NME (its N kept, Cα the methyl ``C``, C and O dropped)."""
    lines = [ln for ln in pdb_text.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    first, last = lines[0][22:27], lines[-1][22:27]
    out = []
    for ln in lines:
        atom, res = ln[12:16].strip(), ln[22:27]
        if res == first:
            if atom == "N":
                continue
            ln = ln[:17] + "ACE" + ln[20:]
            if atom == "CA":
                ln = ln[:12] + " CH3" + ln[16:]
        elif res == last:
            if atom in ("C", "O", "OXT"):
                continue
            ln = ln[:17] + "NME" + ln[20:]
            if atom == "CA":
                ln = ln[:12] + " C  " + ln[16:]
        out.append(ln)
    return "\n".join(out + ["END"]) + "\n"


def from_sequence(name: str, sequence: str, capped: bool) -> Molecule:
    """A peptide from its one-letter sequence: PeptideBuilder's extended chain, hydrogens for Amber14 at pH 7.

    ``capped``: ACE and NME caps; else charged termini (the C-terminal OXT added by PeptideBuilder).
    """
    import mdtraj
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from openmm import app, unit

    structure = PeptideBuilder.make_extended_structure(f"G{sequence}G" if capped else sequence)
    if not capped:
        PeptideBuilder.add_terminal_OXT(structure)
    buf = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buf)
    text = _capped_pdb(buf.getvalue()) if capped else buf.getvalue()
    pdb = app.PDBFile(io.StringIO(text))
    ff = app.ForceField("amber14-all.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff, pH=7.0)
    charge = pair_parameters(ff.createSystem(modeller.topology)).charge.sum()
    top = mdtraj.Topology.from_openmm(modeller.topology)
    xyz = np.array(modeller.positions.value_in_unit(unit.angstrom))
    numbers = np.array([a.element.atomic_number for a in top.atoms])
    return Molecule(name, top, xyz, numbers, int(round(charge)), sequence)


def amber14_system(topology):
    """The vacuum Amber14 (ff14SB) OpenMM ``System`` of a peptide (mdtraj Topology with its hydrogens)."""
    from openmm import app

    return app.ForceField("amber14-all.xml").createSystem(topology.to_openmm(), nonbondedMethod=app.NoCutoff)


def residue_charges(topology, system=None) -> np.ndarray:
    """Formal charge (e) of each residue of an Amber14 peptide (the sum of its ff14SB charges, rounded), from
    ``system`` (unset: :func:`amber14_system` of ``topology``)."""
    q = pair_parameters(amber14_system(topology) if system is None else system).charge
    per = np.zeros(topology.n_residues)
    np.add.at(per, [a.residue.index for a in topology.atoms], q)
    return np.rint(per).astype(int)


@dataclass
class MoleculeData:
    """A molecule data set as :func:`read_dataset` returns it (F frames, A atoms).

    Attributes:
        folder: where it was read from; ``meta``: dataset.json.
        numbers: (A,) atomic numbers; ``topology``: mdtraj Topology.
        positions: (F, A, 3) Å; ``energy``: (F,) kcal/mol; ``forces``: (F, A, 3) kcal/mol/Å.
        split: (F,) codes into :data:`SPLITS`; ``run``: (F,) which sampling run; ``temperature``: (F,) K.
    """

    folder: Path
    meta: dict
    topology: object
    numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    split: np.ndarray
    run: np.ndarray
    temperature: np.ndarray

    def subset(self, split: str) -> dict[str, np.ndarray]:
        """``positions``, ``energy`` and ``forces`` of the frames of one split (``train``, ``val``, ``test``)."""
        m = self.split == SPLITS.index(split)
        return {"positions": self.positions[m], "energy": self.energy[m], "forces": self.forces[m]}


def read_dataset(folder: str | Path) -> MoleculeData:
    """Read a data set folder written by ``hemeplm dataset``; errors name the file and the problem."""
    import mdtraj

    folder = Path(folder)
    missing = [f for f in DATASET_FILES if not (folder / f).is_file()]
    if missing:
        raise HemeplmError(f"not a molecule data set: {', '.join(missing)} missing (make one with hemeplm dataset)",
                           folder)
    meta = json.loads((folder / "dataset.json").read_text())
    traj = mdtraj.load(str(folder / "traj.dcd"), top=str(folder / "topology.pdb"))
    with np.load(folder / ENERGY_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    n = traj.n_frames
    if arrays["energy_kcal_mol"].shape != (n,) or arrays["forces_kcal_mol_A"].shape != (n, traj.n_atoms, 3):
        raise HemeplmError(f"{ENERGY_FILE} does not match traj.dcd ({n} frames of {traj.n_atoms} atoms)", folder)
    numbers = np.array([a.element.atomic_number for a in traj.topology.atoms])
    return MoleculeData(folder, meta, traj.topology, numbers, traj.xyz.astype(np.float64) * 10.0,
                        arrays["energy_kcal_mol"].astype(np.float64), arrays["forces_kcal_mol_A"].astype(np.float64),
                        arrays["split"].astype(np.int64), arrays["run"].astype(np.int64),
                        arrays["temperature_K"].astype(np.float64))


def read_datasets(folder: str | Path) -> list[MoleculeData]:
    """The data sets of a folder: its own (``dataset.json``), or, for a fragment set (``fragments.json``), each
    fragment's, in the order listed there."""
    folder = Path(folder)
    index = folder / "fragments.json"
    if not index.is_file():
        return [read_dataset(folder)]
    try:
        listed = json.loads(index.read_text())["fragments"]
    except (ValueError, KeyError) as exc:
        raise HemeplmError(f"not a fragment set's index ({exc})", index) from exc
    return [read_dataset(folder / f["folder"]) for f in listed]


def time_blocks(n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Split codes (n,) of one run's frames in time order: the first block train, then val, then test."""
    edges = np.round(np.cumsum(fractions) / sum(fractions) * n).astype(int)
    return np.searchsorted(edges, np.arange(n), side="right").astype(np.int8)
