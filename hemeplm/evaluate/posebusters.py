"""PoseBusters checks of every ligand pose against its protein, and the poses as SDF.

Each frame's ligand is checked by the ``posebusters`` package (its ``dock``
configuration) against that frame's protein: RDKit sanitisation, InChI
conversion, connectivity, radicals, bond lengths, bond angles and internal
clashes against RDKit distance-geometry bounds, aromatic-ring and double-bond
flatness, non-flatness of saturated rings, internal energy against an ensemble
of RDKit conformers, and minimum distance, maximum distance and volume overlap
with the protein. Its checks against cofactors and waters are left out (the
protein is all there is) and so is file loading (the molecules are built here).

**Bond orders** come from ``--ligand-file`` (mol2/SDF, matched to the
topology's ligand atoms by name, else in order, as ``data.ligand_file`` in
training), else from the reference topology: its bond orders, or, when it has
the ligand's hydrogens (an Amber prmtop, a full PDB with CONECT records), the
orders RDKit perceives from them. A heavy-atom topology with neither gives no
bond orders and the checks are skipped (``info.posebusters`` says so).

**Hydrogens.** Generated frames hold heavy atoms only, so the poses are heavy
atoms with implicit hydrogens, as docking programs write them. PoseBusters'
geometry and distance checks ignore hydrogens; its internal-energy check adds
them with coordinates and optimises only them (UFF) before comparing energies.
Adding hydrogens here would test where they were put, not the model.

| key | definition | better |
|---|---|---|
| ``posebusters_pass_fraction`` | fraction of frames whose ligand passes every check below; null without ligand or bond orders | higher |
| ``posebusters_<check>`` | fraction of frames passing one check: ``sanitization``, ``inchi_convertible``, ``all_atoms_connected``, ``no_radicals``, ``bond_lengths``, ``bond_angles``, ``internal_steric_clash``, ``aromatic_ring_flatness``, ``non-aromatic_ring_non-flatness``, ``double_bond_flatness``, ``internal_energy``, ``protein-ligand_maximum_distance``, ``minimum_distance_to_protein``, ``volume_overlap_with_protein`` | higher |

The poses of the generated ensembles are written as SDF (``ligand_poses.sdf``,
``ligand_poses_prior.sdf``), one record per frame named ``<trajectory file>
frame <i>``, coordinates in Å in the common Cα frame.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError
from hemeplm.evaluate.geometry import Geometry
from hemeplm.evaluate.stats import evenly_spaced
from hemeplm.data.ligand import _mol_from_file, _mol_from_topology

#: prefix of the metric keys
KEY_PREFIX = "posebusters_"
#: PoseBusters checks at most this many evenly spaced frames per ensemble (about 0.5 s a frame on one CPU core)
MAX_FRAMES = 100


def ligand_template(system, geom: Geometry, ligand_file: str | Path | None = None) -> tuple[object | None, str]:
    """The ligand's heavy atoms as a sanitised RDKit molecule with bond orders, in ``geom.ligand`` order.

    Args:
        system: the reference :class:`~hemeplm.data.load.MDSystem` (its full topology gives bond orders
            when there is no ``ligand_file``); ligand_file: mol2/SDF of the ligand.
    Returns:
        the molecule (no conformer) or None, and a sentence for ``info.posebusters``: where the bond
        orders came from, or ``"skipped: ..."`` and why.
    """
    from rdkit import Chem

    if not len(geom.ligand):
        return None, "skipped: no ligand"
    if ligand_file is not None:
        names = [geom.topology.atom(int(i)).name for i in geom.ligand]
        mol, _ = _mol_from_file(ligand_file, names, [geom.symbols[int(i)] for i in geom.ligand])
        source = f"bond orders from {ligand_file}"
    else:
        mol = _mol_from_topology(system.full_topology, system.full_ligand, system.full_first_frame)
        has_h = any(a.GetSymbol() == "H" for a in mol.GetAtoms())
        if not has_h and all(b.GetBondType() == Chem.BondType.SINGLE for b in mol.GetBonds()):
            return None, ("skipped: the topology has neither the ligand's hydrogens nor bond orders; "
                          "give the ligand as mol2/SDF (--ligand-file)")
        mol = Chem.RemoveHs(mol, sanitize=False)
        source = "bond orders from the topology" + (" (perceived from its hydrogens)" if has_h else "")
    mol = Chem.Mol(mol)
    mol.RemoveAllConformers()
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several types
        return None, f"skipped: the ligand with {source} does not sanitise: {exc}"
    if mol.GetNumAtoms() != len(geom.ligand):
        raise HemeplmError(f"the ligand template has {mol.GetNumAtoms()} heavy atoms but the ligand selection "
                           f"{len(geom.ligand)}", ligand_file or "topology")
    return mol, f"{source}; heavy atoms with implicit hydrogens"


def _with_coordinates(template, xyz: np.ndarray):
    """A copy of RDKit molecule ``template`` with one conformer at (n_atoms, 3) Å ``xyz``."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.Mol(template)
    mol.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for k, p in enumerate(np.asarray(xyz, dtype=np.float64)):
        conf.SetAtomPosition(k, Point3D(*p))
    mol.AddConformer(conf, assignId=True)
    return mol


def protein_template(geom: Geometry, frame: np.ndarray):
    """The protein atoms of ``geom`` as an unsanitised RDKit molecule with PDB residue information.

    Args:
        frame: (A, 3) Å, all atoms; its protein atoms give the conformer.
    """
    import mdtraj
    from rdkit import Chem

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "protein.pdb"
        mdtraj.Trajectory(frame[geom.protein][None] / 10.0, geom.topology.subset(geom.protein)).save_pdb(str(path))
        return Chem.MolFromPDBFile(str(path), sanitize=False, removeHs=False, proximityBonding=False)


def _config() -> dict:
    """PoseBusters' ``dock`` configuration without file loading and without cofactor and water checks."""
    import posebusters
    import yaml

    path = Path(posebusters.__file__).parent / "config" / "dock.yml"
    config = yaml.safe_load(path.read_text())
    config["modules"] = [m for m in config["modules"] if m["function"] != "loading"
                         and "protein" not in m.get("parameters", {}).get("ignore_types", ())]
    return config


def posebusters_checks(segments: list[np.ndarray], geom: Geometry, template, max_frames: int = MAX_FRAMES) -> dict:
    """PoseBusters pass fractions of the ligand against its protein, frame by frame.

    Args:
        segments: per trajectory, (F_s, A, 3) Å; template: from :func:`ligand_template` (None gives NaN);
        max_frames: at most this many frames, evenly spaced over all of them, are checked (0: none, NaN).
    Returns:
        ``posebusters_pass_fraction`` and ``posebusters_<check>`` (module table); NaN for a None template.
    """
    if template is None or max_frames < 1:
        return {f"{KEY_PREFIX}pass_fraction": math.nan}
    import pandas as pd
    from posebusters import PoseBusters

    frames = np.concatenate(segments)
    frames = frames[evenly_spaced(len(frames), max_frames)]
    protein = protein_template(geom, frames[0])
    rows = [(_with_coordinates(template, x[geom.ligand]), None, _with_coordinates(protein, x[geom.protein]))
            for x in frames]
    table = PoseBusters(_config(), max_workers=0).bust_table(pd.DataFrame(rows, columns=["mol_pred", "mol_true",
                                                                                          "mol_cond"]))
    passed = table.astype(bool).to_numpy()
    out = {f"{KEY_PREFIX}pass_fraction": float(passed.all(1).mean())}
    out.update({f"{KEY_PREFIX}{c}": float(passed[:, k].mean()) for k, c in enumerate(table.columns)})
    return out


def write_poses(path: str | Path, segments: list[np.ndarray], names: list[str], geom: Geometry, template) -> Path:
    """Write every frame's ligand as an SDF record named ``<name> frame <i>``.

    Args:
        segments: per trajectory, (F_s, A, 3) Å; names: per trajectory, its file name.
    """
    from rdkit import Chem

    with Chem.SDWriter(str(path)) as writer:
        for name, seg in zip(names, segments):
            for i, x in enumerate(seg):
                mol = _with_coordinates(template, x[geom.ligand])
                mol.SetProp("_Name", f"{name} frame {i}")
                writer.write(mol)
    return Path(path)
