"""Force-field parameters read from users' topology files with OpenMM.

The data layer needs the topology's partial charges (ligand features) and the force-field layer
(:mod:`hemeplm.forcefield`) builds systems and energy labels on the same readers, so they live
here: an OpenMM ``System`` from a prmtop, PSF, GROMACS top or all-atom PDB
(:func:`openmm_system`, hemes renamed to CHARMM36's ``HEME`` by :func:`prepare_heme`), its
non-bonded pair parameters (:class:`PairParameters`), the vacuum Coulomb + Lennard-Jones pair
energy (:func:`coulomb_lj`), and the protein residue of each atom (:func:`residue_labels`).
OpenMM is imported inside the functions that use it: reading a trajectory does not need it.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemeplm.errors import HemeplmError, require_file


COULOMB_KCAL_A = 332.0637  # kcal/mol Å e⁻²: OpenMM's 138.935456 kJ/mol nm e⁻² in these units


KJ_PER_KCAL = 4.184


@dataclass
class PairParameters:
    """Per-atom non-bonded parameters of an OpenMM system, in Å, kcal/mol and e.

    Attributes (A atoms):
        charge: (A,) partial charges.
        sigma, epsilon: (A,) Lennard-Jones parameters of ``NonbondedForce`` (Lorentz–Berthelot).
        lj_type: (A,) index into ``acoef``/``bcoef`` tables, or None without tables.
        acoef, bcoef: (K, K) tables, E = acoef/r¹² − bcoef/r⁶ (kcal/mol Å¹², kcal/mol Å⁶), or None.
        exceptions: {(i, j): (charge product, sigma, epsilon)} with i < j.
        excluded: set of (i, j), i < j, pairs the tabulated force skips.
    """

    charge: np.ndarray
    sigma: np.ndarray
    epsilon: np.ndarray
    lj_type: np.ndarray | None
    acoef: np.ndarray | None
    bcoef: np.ndarray | None
    exceptions: dict
    excluded: set

    def pair_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Coulomb + Lennard-Jones energy (kcal/mol) of atom pairs ``i``, ``j`` (broadcastable) at distance ``r`` Å."""
        return self.lb_energy(i, j, r) + self.table_energy(i, j, r)

    def lb_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The Coulomb + Lorentz–Berthelot Lennard-Jones part of :meth:`pair_energy` (what an exception replaces)."""
        return coulomb_lj(self.charge[i] * self.charge[j], 0.5 * (self.sigma[i] + self.sigma[j]),
                          np.sqrt(self.epsilon[i] * self.epsilon[j]), r)

    def table_energy(self, i: np.ndarray, j: np.ndarray, r: np.ndarray) -> np.ndarray:
        """The ``acoef/bcoef`` table part of :meth:`pair_energy` (NBFIX; 0 without tables)."""
        if self.acoef is None:
            return np.zeros(np.shape(r))
        r6 = r ** -6
        ti, tj = self.lj_type[i], self.lj_type[j]
        return self.acoef[ti, tj] * r6 * r6 - self.bcoef[ti, tj] * r6


def coulomb_lj(qq, sigma, epsilon, r):
    """Vacuum Coulomb + 4ε((σ/r)¹² − (σ/r)⁶) in kcal/mol: charge products (e²), σ and r (Å), ε (kcal/mol);
    numpy arrays, torch tensors or floats of one shape (broadcastable)."""
    s6 = (sigma / r) ** 6
    return COULOMB_KCAL_A * qq / r + 4.0 * epsilon * (s6 * s6 - s6)


def pair_parameters(system) -> PairParameters:
    """Read :class:`PairParameters` from an OpenMM ``System``.

    Raises HemeplmError for custom non-bonded forms other than ``acoef/bcoef`` tables,
    whose pair energies this module cannot evaluate.
    """
    import openmm
    from openmm import unit

    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(nb) != 1:
        raise HemeplmError(f"the force field has {len(nb)} NonbondedForce terms; interaction energies need one")
    nb = nb[0]
    n = system.getNumParticles()
    q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        qi, si, ei = nb.getParticleParameters(i)
        q[i] = qi.value_in_unit(unit.elementary_charge)
        sig[i] = si.value_in_unit(unit.angstrom)
        eps[i] = ei.value_in_unit(unit.kilocalorie_per_mole)
    exceptions = {}
    for k in range(nb.getNumExceptions()):
        i, j, qq, s, e = nb.getExceptionParameters(k)
        exceptions[(min(i, j), max(i, j))] = (qq.value_in_unit(unit.elementary_charge ** 2),
                                              s.value_in_unit(unit.angstrom), e.value_in_unit(unit.kilocalorie_per_mole))
    lj_type = acoef = bcoef = None
    excluded: set = set()
    for f in system.getForces():
        if not isinstance(f, openmm.CustomNonbondedForce):
            continue
        names = [f.getTabulatedFunctionName(k) for k in range(f.getNumTabulatedFunctions())]
        if not {"acoef", "bcoef"} <= set(names) or f.getNumPerParticleParameters() != 1:
            raise HemeplmError(f"the force field has a custom non-bonded term ({f.getEnergyFunction()!r}) "
                               "whose pair energies cannot be evaluated here")
        tables = {}
        for name in ("acoef", "bcoef"):
            kx, ky, values = f.getTabulatedFunction(names.index(name)).getFunctionParameters()
            tables[name] = np.asarray(values).reshape(ky, kx).T
        # OpenMM tables are in kJ/mol nm^12 and kJ/mol nm^6
        acoef = tables["acoef"] * 1e12 / KJ_PER_KCAL
        bcoef = tables["bcoef"] * 1e6 / KJ_PER_KCAL
        lj_type = np.array([int(round(f.getParticleParameters(i)[0])) for i in range(n)])
        excluded = {(min(a, b), max(a, b)) for a, b in (f.getExclusionParticles(k) for k in range(f.getNumExclusions()))}
    return PairParameters(q, sig, eps, lj_type, acoef, bcoef, exceptions, excluded)


def residue_labels(topology) -> tuple[np.ndarray, list[str]]:
    """(A,) protein residue index per atom (-1 elsewhere) and the residue names (``ALA99``) of an mdtraj Topology."""
    index = -np.ones(topology.n_atoms, dtype=np.int64)
    names = []
    for res in topology.residues:
        if not res.is_protein:
            continue
        for a in res.atoms:
            index[a.index] = len(names)
        names.append(f"{res.name}{res.resSeq}")
    return index, names


def openmm_system(topology: str | Path, forcefield: list[str] | None = None, solvent: str = "vacuum",
                  cutoff_nm: float = 1.2, periodic: bool = False):
    """An OpenMM (Topology, System) for an all-atom topology file.

    Args:
        topology: Amber ``.prmtop``/``.parm7``; CHARMM ``.psf`` (``forcefield``: its parameter
            files, .prm/.rtf/.str); GROMACS ``.top`` (``forcefield``: the .gro for box and
            include directory is the file's folder); or PDB (``forcefield``: OpenMM XML files,
            default CHARMM36 with its HEME template, the route of ``hemeplm simulate``).
        solvent: ``implicit`` (OBC2; prmtop only), ``vacuum`` or ``explicit`` (PME, needs ``periodic``).
        cutoff_nm: non-bonded cutoff of implicit/explicit solvent (vacuum uses none).
        periodic: the trajectory has a box.
    Returns:
        (openmm.app.Topology, openmm.System) with constraints on bonds to hydrogen, as
        ``hemeplm simulate`` runs (their forces are not part of the force labels).
    """
    from openmm import app, unit

    path = require_file(topology)
    name = path.name.lower()
    if solvent not in ("implicit", "vacuum", "explicit"):
        raise HemeplmError(f"solvent must be implicit, vacuum or explicit, got {solvent!r}")
    if solvent == "explicit" or periodic:
        method = app.PME if solvent == "explicit" else app.CutoffPeriodic
    else:
        method = app.NoCutoff if solvent == "vacuum" else app.CutoffNonPeriodic
    kwargs = {"nonbondedMethod": method, "constraints": app.HBonds}
    if method is not app.NoCutoff:
        kwargs["nonbondedCutoff"] = cutoff_nm * unit.nanometer
    if solvent == "implicit" and not name.endswith((".prmtop", ".parm7")):
        raise HemeplmError("implicit solvent (OBC2) labels need an Amber prmtop; use --solvent vacuum", path)
    try:
        if name.endswith((".prmtop", ".parm7")):
            top = app.AmberPrmtopFile(str(path))
            if solvent == "implicit":
                kwargs["implicitSolvent"] = app.OBC2
            return top.topology, top.createSystem(**kwargs)
        if name.endswith(".psf"):
            if not forcefield:
                raise HemeplmError("a PSF needs its CHARMM parameter files (--forcefield X.prm Y.rtf ...)", path)
            psf = app.CharmmPsfFile(str(path))
            return psf.topology, psf.createSystem(app.CharmmParameterSet(*forcefield), **kwargs)
        if name.endswith(".top"):
            gro = [f for f in forcefield or [] if f.lower().endswith(".gro")]
            box = app.GromacsGroFile(gro[0]).getPeriodicBoxVectors() if gro else None
            top = app.GromacsTopFile(str(path), periodicBoxVectors=box, includeDir=str(path.parent))
            return top.topology, top.createSystem(**kwargs)
        if name.endswith((".pdb", ".pdb.gz", ".ent")):
            return _pdb_system(path, forcefield or ["charmm36.xml"], solvent, kwargs)
    except HemeplmError:
        raise
    except Exception as exc:
        raise HemeplmError(f"cannot build a force-field system: {' '.join(str(exc).split())}", path) from exc
    raise HemeplmError("energy labels need an Amber prmtop, a CHARMM PSF, a GROMACS top or an all-atom PDB", path)


def _pdb_system(path: Path, forcefield: list[str], solvent: str, kwargs: dict):
    """All-atom PDB + OpenMM XML force field (hemes renamed to CHARMM's HEME as ``hemeplm simulate`` does)."""
    from openmm import app


    pdb = app.PDBFile(str(path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    prepare_heme(modeller)
    if not any(a.element is not None and a.element.symbol == "H" for a in modeller.topology.atoms()):
        raise HemeplmError("has no hydrogens; energy labels need the all-atom topology of the MD", path)
    files = list(forcefield)
    if any(r.name == "HOH" for r in modeller.topology.residues()) and "charmm36/water.xml" not in files:
        files.append("charmm36/water.xml")
    return modeller.topology, app.ForceField(*files).createSystem(modeller.topology, **kwargs)


HEME_PDB_NAMES = ("HEM", "HEC", "HEME")


@functools.lru_cache(maxsize=None)
def heme_template(forcefield_file: str = "charmm36.xml") -> tuple[list[str], list[tuple[str, str]]]:
    """Atom names and bonds of CHARMM36's ``HEME`` residue template."""
    from openmm.app import forcefield as ffmod

    path = Path(ffmod.__file__).parent / "data" / forcefield_file
    for res in ET.parse(path).getroot().iter("Residue"):
        if res.get("name") == "HEME":
            atoms = [a.get("name") for a in res.iter("Atom")]
            bonds = [(b.get("atomName1"), b.get("atomName2")) for b in res.iter("Bond")]
            return atoms, bonds
    raise HemeplmError("no HEME residue template", path)


def heme_hydrogen_definitions() -> bytes:
    """Hydrogen definitions for ``HEME`` (each template H with its bonded heavy atom)."""
    atoms, bonds = heme_template()
    hydrogens = {a for a in atoms if a.startswith("H")}
    lines = ["<Residues>", ' <Residue name="HEME">']
    for a, b in bonds:
        if a in hydrogens and b not in hydrogens:
            lines.append(f'  <H name="{a}" parent="{b}"/>')
        elif b in hydrogens and a not in hydrogens:
            lines.append(f'  <H name="{b}" parent="{a}"/>')
    lines += [" </Residue>", "</Residues>"]
    return "\n".join(lines).encode()


def prepare_heme(modeller) -> int:
    """Rename heme residues to ``HEME`` and add the template's heavy-atom bonds.

    Returns the number of hemes found.
    """
    _, bonds = heme_template()
    n = 0
    existing = {frozenset((b[0].index, b[1].index)) for b in modeller.topology.bonds()}
    for res in modeller.topology.residues():
        if res.name not in HEME_PDB_NAMES:
            continue
        n += 1
        res.name = "HEME"
        by_name = {a.name: a for a in res.atoms()}
        for a, b in bonds:
            if a in by_name and b in by_name:
                key = frozenset((by_name[a].index, by_name[b].index))
                if key not in existing:
                    modeller.topology.addBond(by_name[a], by_name[b])
    return n


def read_charges(path: Path, forcefield: list[str] | None = None) -> np.ndarray | None:
    """(A,) partial charges (e) of every atom of a topology, read by OpenMM; None when it has none.

    Amber prmtop/parm7: its charges. CHARMM PSF: its charge column (CHARMM parameter files
    hold none, so none are needed). GRO: the charges of the GROMACS ``.top`` given in
    ``forcefield`` (its folder is the include directory). PDB: only when ``forcefield``
    names OpenMM XML files, which then parameterise it. Anything else has none.
    """

    name = path.name.lower()
    forcefield = list(forcefield or [])
    tops = [f for f in forcefield if f.lower().endswith(".top")]
    if name.endswith(".psf"):
        from openmm import app

        try:
            return np.array([a.charge for a in app.CharmmPsfFile(str(path)).atom_list], dtype=np.float64)
        except Exception as exc:
            raise HemeplmError(f"cannot read charges: {' '.join(str(exc).split())}", path) from exc
    if name.endswith((".prmtop", ".parm7")):
        system = openmm_system(path)[1]
    elif name.endswith(".gro") and tops:
        system = openmm_system(tops[0], [str(path)])[1]
    elif name.endswith((".pdb", ".pdb.gz", ".ent")) and forcefield:
        system = openmm_system(path, forcefield)[1]
    else:
        return None
    return pair_parameters(system).charge
