"""Ligand chemistry with RDKit: per-atom features, bonds, partial charges.

The molecule is built from the full topology (hydrogens included when it has
them), from a mol2/SDF the user gives, or, for a PDB without bonds, from
distances. Bond orders are perceived where RDKit can; metals such as the heme
iron are ordinary atoms with their own element. Features of a heavy atom
count its hydrogens; charges of hydrogens are folded onto their heavy atom.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError, require_file
from hemeplm.geometry.structure import METALS

log = logging.getLogger(__name__)

ELEMENTS = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I", "Fe", "Zn", "Mg", "Ca", "Cu", "Mn", "Co", "Ni",
            "Na", "K", "Se")
HYBRIDISATIONS = ("S", "SP", "SP2", "SP3", "SP3D", "SP3D2")
#: element one-hot (+ other) | aromatic | hybridisation one-hot (+ other) | degree/4 | formal charge | in ring | charge
N_LIGAND_FEATURES = len(ELEMENTS) + 1 + 1 + len(HYBRIDISATIONS) + 1 + 4


def element_index(symbol: str) -> int:
    """Index of an element in :data:`ELEMENTS`, ``len(ELEMENTS)`` for any other."""
    return ELEMENTS.index(symbol) if symbol in ELEMENTS else len(ELEMENTS)


def _mol_from_topology(topology, atoms: np.ndarray, xyz: np.ndarray):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    local = {int(a): k for k, a in enumerate(atoms)}
    for a in atoms:
        el = topology.atom(int(a)).element
        atom = Chem.Atom(el.symbol.capitalize() if el is not None else "C")
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    n_bonds = 0
    for b in topology.bonds:
        i, j = b[0].index, b[1].index
        if i in local and j in local:
            order = {2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 4: Chem.BondType.AROMATIC}.get(
                getattr(b, "order", None) or 1, Chem.BondType.SINGLE)
            rw.AddBond(local[i], local[j], order)
            n_bonds += 1
    conf = Chem.Conformer(len(atoms))
    for k, a in enumerate(atoms):
        conf.SetAtomPosition(k, Point3D(*map(float, xyz[int(a)])))
    rw.AddConformer(conf, assignId=True)
    mol = rw.GetMol()
    if n_bonds == 0 and len(atoms) > 1:
        from rdkit.Chem import rdDetermineBonds

        rdDetermineBonds.DetermineConnectivity(mol)
    has_h = any(a.GetSymbol() == "H" for a in mol.GetAtoms())
    has_metal = any(a.GetSymbol() in METALS for a in mol.GetAtoms())
    explicit_orders = any(b.GetBondType() != Chem.BondType.SINGLE for b in mol.GetBonds())
    if has_h and not has_metal and not explicit_orders:
        from rdkit.Chem import rdDetermineBonds

        try:
            perceived = Chem.Mol(mol)
            rdDetermineBonds.DetermineBondOrders(perceived, charge=0)
            mol = perceived
        except Exception as exc:  # RDKit raises ValueError/RuntimeError depending on version
            log.info("bond orders not perceived (%s); single bonds kept", exc)
    return mol


#: GAFF atom types (lower case, as antechamber writes them in mol2) whose element is not their first letter
GAFF_ELEMENTS = {"cl": "Cl", "br": "Br"}


def _read_mol2(path: Path):
    """RDKit molecule from a mol2 file, hydrogens kept.

    RDKit reads Tripos atom types only; GAFF types (``ca``, ``c3``, ``hc``, ...)
    are replaced by their element symbol first.
    """
    from rdkit import Chem

    lines, section = [], None
    for line in path.read_text().splitlines():
        fields = line.split()
        if line.startswith("@<TRIPOS>"):
            section = line.strip()
        elif section == "@<TRIPOS>ATOM" and len(fields) > 5 and fields[5].islower():
            fields[5] = GAFF_ELEMENTS.get(fields[5], fields[5][0].upper())
            line = " ".join(fields)
        lines.append(line)
    return Chem.MolFromMol2Block("\n".join(lines), removeHs=False, sanitize=True)


def _without_hydrogens(mol):
    """``mol`` without its hydrogens (bond orders kept), each hydrogen's mol2 partial charge folded onto its
    heavy atom."""
    from rdkit import Chem

    charge = "_TriposPartialCharge"
    for atom in mol.GetAtoms():
        if atom.GetSymbol() == "H" and atom.GetDegree() == 1 and atom.HasProp(charge):
            heavy = atom.GetNeighbors()[0]
            if heavy.HasProp(charge):
                heavy.SetDoubleProp(charge, heavy.GetDoubleProp(charge) + atom.GetDoubleProp(charge))
    return Chem.RemoveHs(mol)


def _mol_from_file(path: str | Path, names: list[str], symbols: list[str]):
    """The ligand of a mol2/SDF file as an RDKit molecule in the topology's atom order.

    The file holds all the ligand's atoms or its heavy atoms only; for a selection
    without hydrogens, the file's hydrogens are removed (:func:`_without_hydrogens`). Atoms are
    matched by name when the file names them as the topology does (mol2),
    else taken in file order; their elements must agree either way.

    Args:
        names, symbols: (L,) atom names and element symbols of the ligand in the topology.
    Returns:
        the molecule (L' atoms) and (L',) int64 positions of its atoms in the topology's ligand.
    """
    from rdkit import Chem

    p = require_file(path)
    name = p.name.lower()
    if name.endswith(".mol2"):
        mol = _read_mol2(p)
    elif name.endswith((".sdf", ".mol")):
        mol = next(iter(Chem.SDMolSupplier(str(p), removeHs=False)), None)
    else:
        raise HemeplmError("unknown ligand file format; use .mol2 or .sdf", p)
    if mol is None:
        raise HemeplmError("RDKit cannot read this ligand file", p)
    if mol.GetNumAtoms() > len(symbols) and "H" not in symbols:
        mol = _without_hydrogens(mol)
    heavy = [k for k, s in enumerate(symbols) if s != "H"]
    target = list(range(len(symbols))) if mol.GetNumAtoms() == len(symbols) else heavy
    if mol.GetNumAtoms() != len(target):
        raise HemeplmError(f"ligand file has {mol.GetNumAtoms()} atoms but the ligand selection has "
                           f"{len(symbols)} ({len(heavy)} heavy)", p)
    file_names = [a.GetProp("_TriposAtomName") if a.HasProp("_TriposAtomName") else "" for a in mol.GetAtoms()]
    want_names = [names[k] for k in target]
    if sorted(file_names) == sorted(want_names) and len(set(want_names)) == len(want_names):
        mol = Chem.RenumberAtoms(mol, [file_names.index(n) for n in want_names])
    if [a.GetSymbol() for a in mol.GetAtoms()] != [symbols[k] for k in target]:
        raise HemeplmError("ligand file's elements differ from the ligand selection's (atoms matched by name "
                           "where the names agree, else in file order)", p)
    return mol, np.asarray(target, dtype=np.int64)


def _fold_hydrogen_charges(topology, ligand: np.ndarray, charges: np.ndarray) -> np.ndarray:
    """(A_full,) ``charges`` with each ligand hydrogen's charge moved onto the ligand atom it is bonded to."""
    out = charges.astype(np.float64)
    lig = set(ligand.tolist())
    for a, b in topology.bonds:
        for h, heavy in ((a, b), (b, a)):
            if h.index in lig and heavy.index in lig and h.element is not None and h.element.symbol == "H":
                out[heavy.index] += out[h.index]
                out[h.index] = 0.0
    return out


def ligand_features(full_topology, full_ligand: np.ndarray, xyz: np.ndarray, keep: np.ndarray,
                    charges: np.ndarray | None = None, ligand_file: str | Path | None = None) -> dict:
    """Per-atom features and bonds of the ligand atoms that are kept.

    Args:
        full_topology: mdtraj Topology as read (all atoms).
        full_ligand: (L_full,) ligand indices in it.
        xyz: (A_full, 3) coordinates in Å (for bond perception).
        keep: (L,) the kept ligand atoms as indices into ``full_ligand``'s topology.
        charges: (A_full,) topology partial charges, or None (Gasteiger is computed).
        ligand_file: optional mol2/SDF of the ligand (all atoms or heavy atoms; matched by atom name, else order).
    Returns:
        ``features`` (L, N_LIGAND_FEATURES) float32, ``element`` (L,) int64,
        ``bonds`` (2, E) int64 over kept-ligand positions, ``charge`` (L,) float32,
        ``charge_source`` ("topology", "file" or "gasteiger").
    """
    from rdkit import Chem

    if len(full_ligand) == 0:
        return {"features": np.zeros((0, N_LIGAND_FEATURES), np.float32), "element": np.zeros(0, np.int64),
                "bonds": np.zeros((2, 0), np.int64), "charge": np.zeros(0, np.float32), "charge_source": "none"}
    atoms = [full_topology.atom(int(a)) for a in full_ligand]
    if ligand_file is not None:
        mol, local = _mol_from_file(ligand_file, [a.name for a in atoms],
                                    [a.element.symbol if a.element else "C" for a in atoms])
        if charges is not None and len(local) < len(full_ligand):
            charges = _fold_hydrogen_charges(full_topology, full_ligand, charges)
        full_ligand = full_ligand[local]
        if not set(keep.tolist()) <= set(full_ligand.tolist()):
            raise HemeplmError("ligand file has no hydrogens but hydrogens are kept; give one with hydrogens",
                               ligand_file)
    else:
        mol = _mol_from_topology(full_topology, full_ligand, xyz)
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:
        log.info("ligand not sanitisable (%s); partial sanitisation", exc)
        mol.UpdatePropertyCache(strict=False)
        Chem.SanitizeMol(mol, Chem.SanitizeFlags.SANITIZE_ALL ^ Chem.SanitizeFlags.SANITIZE_PROPERTIES
                         ^ Chem.SanitizeFlags.SANITIZE_KEKULIZE, catchErrors=True)
    q, source = None, "gasteiger"
    if ligand_file is not None and all(a.HasProp("_TriposPartialCharge") for a in mol.GetAtoms()):
        q, source = np.array([a.GetDoubleProp("_TriposPartialCharge") for a in mol.GetAtoms()]), "file"
    elif charges is not None:
        q, source = charges[full_ligand].astype(np.float64), "topology"
    else:
        from rdkit.Chem import AllChem

        AllChem.ComputeGasteigerCharges(mol)
        q = np.array([a.GetDoubleProp("_GasteigerCharge") if a.HasProp("_GasteigerCharge") else 0.0
                      for a in mol.GetAtoms()])
        q = np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0)
    # fold hydrogen charges onto heavy atoms that are kept
    pos = {int(a): k for k, a in enumerate(full_ligand)}
    keep_local = [pos[int(a)] for a in keep]
    owner = np.arange(mol.GetNumAtoms())
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        for h, heavy in ((i, j), (j, i)):
            if mol.GetAtomWithIdx(h).GetSymbol() == "H" and mol.GetAtomWithIdx(heavy).GetSymbol() != "H":
                owner[h] = heavy
    keep_set = set(keep_local)
    fold = np.array([k if k in keep_set else owner[k] for k in range(mol.GetNumAtoms())])
    kept_charge = np.zeros(mol.GetNumAtoms())
    np.add.at(kept_charge, fold, q)
    feats, elements = [], []
    for k in keep_local:
        atom = mol.GetAtomWithIdx(k)
        sym = atom.GetSymbol()
        el = np.zeros(len(ELEMENTS) + 1)
        el[element_index(sym)] = 1
        hyb = np.zeros(len(HYBRIDISATIONS) + 1)
        h = str(atom.GetHybridization())
        hyb[HYBRIDISATIONS.index(h) if h in HYBRIDISATIONS else len(HYBRIDISATIONS)] = 1
        feats.append(np.concatenate([el, [float(atom.GetIsAromatic())], hyb,
                                     [atom.GetTotalDegree() / 4.0, float(atom.GetFormalCharge()),
                                      float(atom.IsInRing()), kept_charge[k]]]))
        elements.append(element_index(sym))
    local_of = {k: n for n, k in enumerate(keep_local)}
    bonds = [(local_of[b.GetBeginAtomIdx()], local_of[b.GetEndAtomIdx()]) for b in mol.GetBonds()
             if b.GetBeginAtomIdx() in local_of and b.GetEndAtomIdx() in local_of]
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2).T
    return {"features": np.asarray(feats, np.float32), "element": np.asarray(elements, np.int64),
            "bonds": bonds, "charge": kept_charge[keep_local].astype(np.float32), "charge_source": source}
