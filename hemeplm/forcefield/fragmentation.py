"""AI2BMD-style fragmentation of a peptide: capped dipeptides recombined with overlap subtraction.

As in AI2BMD (Wang et al., Nature 2024), a chain of residues 0..n−1 is cut into one ACE-X-NME unit per
residue: residue i with the Cα (and its hydrogens), C and O of residue i−1 as the acetyl cap and the N,
H and Cα (with its hydrogens) of residue i+1 as the N-methylamide cap. Neighbouring units overlap in an
ACE-NME unit (N-methylacetamide: Cα, C, O of residue i and N, H, Cα of residue i+1), which is
subtracted::

    E ≈ Σ_i E(ACE-X_i-NME) − Σ_i E(ACE-NME_{i,i+1})

This is inclusion–exclusion over the atom sets (the Cα-H group shared by units i−1 and i+1 enters
once with each sign and cancels), so every atom and every covalent bond is counted exactly once.
Bonds cut at a fragment's edge are capped by a hydrogen on the bond (1.09 Å from carbon, 1.01 Å
from nitrogen); the force on such a link atom is passed to the two atoms of the cut bond by the
chain rule. Each unit carries the formal charge of its residue (termini included), the overlaps
none.

What the fragments leave out is every interaction between atoms that share no fragment (residues
two or more apart). ``long_range="mm"`` adds them as the force field's vacuum Coulomb + Lennard-Jones
pair energies (Amber14 charges, as AI2BMD adds its MM long-range part); ``long_range="gfn2"`` takes the
Coulomb charges from GFN2-xTB itself instead (:func:`fragment_charges`: the fragments' own atomic charges,
averaged over a few reference frames, then fixed, so the forces stay the energy's gradient), which is what the
reference method sees between distant groups (its charges are smaller than Amber14's: a peptide's whole-molecule
GFN2-xTB energies follow them better); ``None`` leaves them out.

Each fragment's energy and forces come from GFN2-xTB, or, as in AI2BMD, from one molecular energy model
(:mod:`hemeplm.models.molecular`) trained on fragments: :func:`make_fragment_datasets` samples the peptide,
cuts every frame into its fragments and labels each with GFN2-xTB, one data set per fragment
(``qm.molecule: [chignolin-fragments]`` trains on them all); ``Fragmented(..., model=...)`` then recombines
the model's fragment energies and forces into the whole peptide's.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemeplm.data.molecules import DATASET_FILES, FRAGMENT_SETS, amber14_system, build_molecule, residue_charges
from hemeplm.data.parameters import COULOMB_KCAL_A, coulomb_lj, pair_parameters
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.qm import (GFN2, PEPTIDE_SAMPLING, SAMPLING, SPLIT_TEXT, GFN2Failure, check_spin, labelled_run,
                                   openmm_langevin, plan_meta, provenance, sampling_plan, write_dataset)
from hemeplm.io import atomic_write_bytes, check_outputs
from hemeplm.models.molecular import predict

LINK_LENGTH = {6: 1.09, 7: 1.01, 8: 0.96}  # Å, X-H bond of a link atom on element X
ACE_PART = ("CA", "HA", "HA2", "HA3", "C", "O")
NME_PART = ("N", "H", "CA", "HA", "HA2", "HA3")
LONG_RANGE = (None, "mm", "gfn2")
REFERENCE_FRAMES = 10  # frames whose GFN2-xTB charges long_range="gfn2" averages


@dataclass
class Fragment:
    """One fragment: real atoms, link atoms, charge and its sign in the sum.

    Attributes:
        name: e.g. ``ACE-TYR2-NME`` or ``ACE-NME 2/3``.
        atoms: (N,) indices of the molecule's atoms it holds.
        links: (K, 2) cut bonds ``(inside, outside)``, each capped by a hydrogen.
        charge: formal charge (e); sign: +1 (unit) or −1 (overlap).
    """

    name: str
    atoms: np.ndarray
    links: np.ndarray
    charge: int
    sign: int
    numbers: np.ndarray = field(default=None)


def _links(atoms: set[int], bonds: list[tuple[int, int]]) -> np.ndarray:
    out = [(a, b) for a, b in bonds if a in atoms and b not in atoms]
    out += [(b, a) for a, b in bonds if b in atoms and a not in atoms]
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)


def fragments(topology, numbers: np.ndarray, charges: np.ndarray | None = None) -> list[Fragment]:
    """The ACE-X-NME units and ACE-NME overlaps of a one-chain peptide (mdtraj Topology).

    Args:
        numbers: (A,) atomic numbers; charges: (R,) formal charge per residue (unset: Amber14's).
    """
    residues = list(topology.residues)
    charges = residue_charges(topology) if charges is None else np.asarray(charges)
    bonds = [(a.index, b.index) for a, b in topology.bonds]

    def part(r: int, names: tuple[str, ...]) -> set[int]:
        return {a.index for a in residues[r].atoms if a.name in names}

    sets = []
    for i, res in enumerate(residues):
        s = {a.index for a in res.atoms}
        if i > 0:
            s |= part(i - 1, ACE_PART)
        if i < len(residues) - 1:
            s |= part(i + 1, NME_PART)
        sets.append(s)
    out = []
    for i, s in enumerate(sets):
        out.append(Fragment(f"ACE-{residues[i].name}{i + 1}-NME", np.array(sorted(s)), _links(s, bonds),
                            int(charges[i]), +1))
    for i in range(len(sets) - 1):
        s = sets[i] & sets[i + 1]
        out.append(Fragment(f"ACE-NME {i + 1}/{i + 2}", np.array(sorted(s)), _links(s, bonds), 0, -1))
    for f in out:
        f.numbers = np.concatenate([numbers[f.atoms], np.ones(len(f.links), dtype=numbers.dtype)])
        check_spin(f.numbers, f.charge, 1)
    return out


def link_positions(x: np.ndarray, links: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """(..., K, 3) link hydrogens on the cut bonds ``links`` (K, 2) of positions ``x`` (..., A, 3) Å."""
    if not len(links):
        return np.zeros((*x.shape[:-2], 0, 3))
    a, b = x[..., links[:, 0], :], x[..., links[:, 1], :]
    d = np.array([LINK_LENGTH.get(int(z), 1.09) for z in numbers[links[:, 0]]])
    u = (b - a) / np.linalg.norm(b - a, axis=-1, keepdims=True)
    return a + d[:, None] * u


def fragment_positions(x: np.ndarray, part: Fragment, numbers: np.ndarray) -> np.ndarray:
    """(..., A, 3) the peptide's positions -> (..., N + K, 3) the fragment's atoms, then its link hydrogens."""
    return np.concatenate([x[..., part.atoms, :], link_positions(x, part.links, numbers)], axis=-2)


def fragment_topology(topology, part: Fragment):
    """The fragment as an mdtraj Topology in :func:`fragment_positions`' order: its atoms (with their residues
    and bonds), then its link hydrogens ``HL1``, ``HL2``, ... in a residue ``LNK`` of their own."""
    import mdtraj

    top = topology.subset(part.atoms)
    if len(part.links):
        residue = top.add_residue("LNK", top.chain(0), resSeq=max(r.resSeq for r in top.residues) + 1)
        index = {int(old): new for new, old in enumerate(part.atoms)}
        for k, (inside, _) in enumerate(part.links):
            top.add_bond(top.atom(index[int(inside)]), top.add_atom(f"HL{k + 1}", mdtraj.element.hydrogen, residue))
    return top


def link_forces(x: np.ndarray, links: np.ndarray, numbers: np.ndarray, f_link: np.ndarray,
                out: np.ndarray, sign: float) -> None:
    """Add ``sign`` × the link hydrogens' forces (F, K, 3) to the atoms of their cut bonds in ``out`` (F, A, 3),
    for positions ``x`` (F, A, 3): for L = a + d·u, u = (b − a)/r, ∂L/∂b = (d/r)(I − u uᵀ) = J and
    ∂L/∂a = I − J."""
    if not len(links):
        return
    a, b = x[:, links[:, 0]], x[:, links[:, 1]]
    r = np.linalg.norm(b - a, axis=-1)
    u = (b - a) / r[..., None]
    d = np.array([LINK_LENGTH.get(int(z), 1.09) for z in numbers[links[:, 0]]])
    j = (d / r)[..., None, None] * (np.eye(3) - u[..., :, None] * u[..., None, :])
    to_b = np.einsum("fkij,fkj->fki", j, f_link)
    np.add.at(out, (slice(None), links[:, 1]), sign * to_b)
    np.add.at(out, (slice(None), links[:, 0]), sign * (f_link - to_b))


class Fragmented:
    """Energy and forces of a peptide by fragmentation (module docstring), each fragment by GFN2-xTB or a model.

    Args:
        topology: mdtraj Topology (one chain); numbers: (A,) atomic numbers.
        long_range: None, ``"mm"`` (Amber14 vacuum Coulomb + LJ between atoms that share no fragment) or ``"gfn2"``
            (the same pairs, Coulomb with :func:`fragment_charges` of ``reference``).
        model: None (each fragment by GFN2-xTB), or a molecular energy model trained on the fragments
            (``energy_and_forces(numbers (N,), pos (B, N, 3))``, :class:`~hemeplm.models.molecular.MolecularEnergy`).
        reference: (F, A, 3) Å, frames for ``long_range="gfn2"``'s charges (e.g. the frames to be predicted).

    ``frag(x (A, 3) Å)`` returns (energy kcal/mol, forces (A, 3) kcal/mol/Å); ``frag(x (F, A, 3))`` returns
    ((F,), (F, A, 3)).
    """

    def __init__(self, topology, numbers: np.ndarray, long_range: str | None = None, model=None,
                 reference: np.ndarray | None = None):
        if long_range not in LONG_RANGE:
            raise ValueError(f"long_range must be one of {LONG_RANGE}, got {long_range!r}")
        if long_range == "gfn2" and reference is None:
            raise ValueError('long_range="gfn2" needs reference frames for its charges')
        self.numbers = np.asarray(numbers)
        system = amber14_system(topology)
        self.parts = fragments(topology, self.numbers, residue_charges(topology, system))
        self.calcs = [gfn2_calculator(f.numbers, f.charge) if model is None else model_calculator(model, f.numbers)
                      for f in self.parts]
        self.pairs = None
        if long_range is not None:
            p = pair_parameters(system)
            charge = p.charge if long_range == "mm" else fragment_charges(self.parts, self.numbers, reference)
            self.pairs = self._uncovered_pairs(charge, p)

    def _uncovered_pairs(self, charge: np.ndarray, p):
        """(i, j, qq, σ, ε) of the atom pairs that no fragment holds, for atomic charges ``charge`` (A,) and Amber14's
        Lennard-Jones (:class:`PairParameters` ``p``)."""
        n = len(self.numbers)
        covered = np.zeros((n, n), dtype=bool)
        for f in self.parts:
            covered[np.ix_(f.atoms, f.atoms)] = True
        i, j = np.nonzero(np.triu(~covered, 1))
        return i, j, charge[i] * charge[j], 0.5 * (p.sigma[i] + p.sigma[j]), np.sqrt(p.epsilon[i] * p.epsilon[j])

    def __call__(self, x: np.ndarray) -> tuple[float | np.ndarray, np.ndarray]:
        """Energy and forces of one frame (A, 3) -> (float, (A, 3)), or of frames (F, A, 3) -> ((F,), (F, A, 3)),
        each fragment's frames computed together (one batch for a model)."""
        x = np.asarray(x, dtype=np.float64)
        frames = x[None] if x.ndim == 2 else x
        energy, forces = np.zeros(len(frames)), np.zeros_like(frames)
        for f, calc in zip(self.parts, self.calcs):
            e, g = calc(fragment_positions(frames, f, self.numbers))
            energy += f.sign * e
            forces[:, f.atoms] += f.sign * g[:, :len(f.atoms)]
            link_forces(frames, f.links, self.numbers, g[:, len(f.atoms):], forces, f.sign)
        if self.pairs is not None:
            e, g = self.long_range(frames)
            energy += e
            forces += g
        return (float(energy[0]), forces[0]) if x.ndim == 2 else (energy, forces)

    def long_range(self, x: np.ndarray) -> tuple[float | np.ndarray, np.ndarray]:
        """Vacuum Coulomb + Lennard-Jones of the uncovered pairs (``long_range`` set): energy and forces of one
        frame (A, 3) or of frames (F, A, 3), as :meth:`__call__`."""
        i, j, qq, sigma, eps = self.pairs
        rij = x[..., j, :] - x[..., i, :]
        r = np.linalg.norm(rij, axis=-1)
        e = coulomb_lj(qq, sigma, eps, r).sum(-1)
        s6 = (sigma / r) ** 6
        de = -COULOMB_KCAL_A * qq / r ** 2 + 4.0 * eps * (-12.0 * s6 * s6 + 6.0 * s6) / r
        f_j = -(de / r)[..., None] * rij
        forces = np.zeros_like(x)
        np.add.at(forces, (..., j, slice(None)), f_j)
        np.add.at(forces, (..., i, slice(None)), -f_j)
        return (float(e), forces) if x.ndim == 2 else (e, forces)


def fragment_charges(parts: list[Fragment], numbers: np.ndarray, frames: np.ndarray,
                     most: int = REFERENCE_FRAMES) -> np.ndarray:
    """(A,) atomic charges (e) of a peptide from GFN2-xTB on its fragments ``parts``: each fragment's charges, a
    link hydrogen's added to the atom it caps, summed with the fragments' signs (so they add up to the peptide's
    formal charge) and averaged over up to ``most`` frames spread evenly through ``frames`` (F, A, 3) or (A, 3) Å;
    a frame GFN2-xTB cannot compute for a fragment is left out of that fragment's average.

    Raises:
        HemeplmError: when GFN2-xTB computes none of the frames for some fragment.
    """
    frames = np.asarray(frames, dtype=np.float64).reshape(-1, len(numbers), 3)
    picked = frames[np.unique(np.linspace(0, len(frames) - 1, min(most, len(frames))).round().astype(int))]
    q = np.zeros(len(numbers))
    for f in parts:
        gfn2 = GFN2(f.numbers, f.charge)
        capped = np.searchsorted(f.atoms, f.links[:, 0])
        got = []
        for x in picked:
            try:
                gfn2(fragment_positions(x, f, numbers))
            except GFN2Failure:
                continue
            c = gfn2.charges[:len(f.atoms)].copy()
            np.add.at(c, capped, gfn2.charges[len(f.atoms):])
            got.append(c)
        if not got:
            raise HemeplmError(f"GFN2-xTB converged on none of the {len(picked)} reference frames of fragment {f.name}")
        q[f.atoms] += f.sign * np.mean(got, axis=0)
    return q


def gfn2_calculator(numbers: np.ndarray, charge: int):
    """``calc(positions (F, N, 3) Å) -> (energies (F,) kcal/mol, forces (F, N, 3) kcal/mol/Å)`` by GFN2-xTB, frame
    by frame (:class:`~hemeplm.forcefield.qm.GFN2`)."""
    gfn2 = GFN2(numbers, charge)

    def calc(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [gfn2(x) for x in positions]
        return np.array([e for e, _ in out]), np.stack([f for _, f in out])

    return calc


def model_calculator(model, numbers: np.ndarray, batch: int = 64):
    """``calc(positions (F, N, 3) Å) -> (energies (F,) kcal/mol, forces (F, N, 3) kcal/mol/Å)`` of a molecular energy
    model for atoms ``numbers`` (N,), ``batch`` frames per call (:func:`~hemeplm.models.molecular.predict`)."""
    def calc(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict(model, numbers, positions, batch, next(model.parameters()).device)

    return calc


#: sampling of a fragment set's peptide: as chignolin's data set's (hemeplm.forcefield.qm.SAMPLING), but a run of its
#: own (another seed, so the peptide's data set stays held out) with more, closer frames (GFN2-xTB on fragments
#: costs a few percent of the whole peptide's)
FRAGMENT_SAMPLING = {**SAMPLING["chignolin"], "frames": 250, "stride": 250, "seed": 1}


def fragment_folder(index: int, part: Fragment) -> str:
    """The data set folder of fragment ``index`` inside a fragment set, e.g. ``02-ACE-TYR2-NME``."""
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9-]+", "_", part.name)


def make_fragment_datasets(name: str, out: str | Path, temperatures: tuple[float, ...] | None = None,
                           frames: int | None = None, stride: int | None = None, equilibration: int | None = None,
                           seed: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """AI2BMD's training data for the peptide of the fragment set ``name``
    (:data:`~hemeplm.data.molecules.FRAGMENT_SETS`).

    The peptide is sampled by Amber14/OBC2 dynamics at each temperature (:func:`~hemeplm.forcefield.qm.openmm_langevin`,
    settings :data:`FRAGMENT_SAMPLING` where unset), every frame is cut into its :func:`fragments` and each fragment
    (link hydrogens included) is labelled by GFN2-xTB with its own charge; a fragment frame GFN2-xTB cannot
    compute is left out of that fragment's set and listed. Each fragment is written as a data set of its own,
    ``OUT/NN-NAME/`` (:func:`~hemeplm.forcefield.qm.write_dataset`: contiguous time blocks, 80/10/10, of each run),
    and ``OUT/fragments.json`` lists them with their signs and charges, the settings and the cost. Returns ``out``.
    """
    from tqdm import tqdm

    out = Path(out)
    plan = sampling_plan(FRAGMENT_SAMPLING, temperatures=temperatures, frames=frames, stride=stride,
                         equilibration=equilibration, seed=seed)
    t0 = time.perf_counter()
    mol = build_molecule(FRAGMENT_SETS[name], plan["seed"])
    parts = fragments(mol.topology, mol.numbers)
    folders = [fragment_folder(k, p) for k, p in enumerate(parts)]
    check_outputs([out / "fragments.json"] + [out / d / f for d in folders for f in DATASET_FILES], force, out)
    cost = {"build": time.perf_counter() - t0, "sampling": 0.0, "labelling": 0.0}
    runs, failed = [[] for _ in parts], [[] for _ in parts]
    for r, temp in enumerate(plan["temperatures"]):
        t = time.perf_counter()
        pos = openmm_langevin(mol.topology, mol.positions, temp, plan["frames"], plan["stride"], plan["equilibration"],
                              plan["dt_fs"], seed=plan["seed"] * 1000 + r, progress=progress)
        cost["sampling"] += time.perf_counter() - t
        t = time.perf_counter()
        for k, part in enumerate(tqdm(parts, desc=f"GFN2-xTB fragments {temp:g} K", disable=not progress)):
            run, bad = labelled_run(part.numbers, fragment_positions(pos, part, mol.numbers), part.charge, r, temp,
                                    plan, progress=False)
            runs[k].append(run)
            failed[k] += bad
        cost["labelling"] += time.perf_counter() - t
    settings = {**plan_meta(plan, plan["seed"]), "sampling": PEPTIDE_SAMPLING,
                "labels": "GFN2-xTB (tblite) of each fragment with its link hydrogens, vacuum, kcal/mol, kcal/mol/Å"}
    for k, part in enumerate(parts):
        write_dataset(out / folders[k], fragment_topology(mol.topology, part), runs[k],
                      {"molecule": f"{name}/{part.name}", "source": f"{mol.source}: {part.name}",
                       "n_atoms": int(len(part.numbers)), "charge": part.charge, "multiplicity": 1, "sign": part.sign,
                       **settings, "split": SPLIT_TEXT, "failed_frames": failed[k], **provenance()})
    cost["total"] = time.perf_counter() - t0
    index = {"molecule": name, "peptide": mol.name, "source": mol.source, **settings,
             "fragments": [{"name": p.name, "folder": folders[k], "sign": p.sign, "charge": p.charge,
                            "n_atoms": int(len(p.numbers))} for k, p in enumerate(parts)],
             "cost_s": {k: round(v, 1) for k, v in cost.items()}, **provenance()}
    atomic_write_bytes(out / "fragments.json", json.dumps(index, indent=2).encode())
    return out
