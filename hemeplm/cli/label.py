"""``hemeplm label``: energy labels for existing all-atom MD (OpenMM rerun, or GFN2-xTB with ``--level gfn2``)."""

from __future__ import annotations

from hemeplm.cli.options import HelpFormatter, add_output_flags, count, positive
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.labels import LEVELS, label_trajectories


def add_parser(sub) -> None:
    """Add ``hemeplm label`` to the ``hemeplm`` subparsers."""
    lab = sub.add_parser("label", help="energy labels for existing all-atom MD (OpenMM rerun or GFN2-xTB)",
                         formatter_class=HelpFormatter,
                         description="Rerun all-atom trajectories through OpenMM: per frame the potential energy, "
                                     "all-atom forces and each protein residue's interaction energy with the ligand "
                                     "(Coulomb + Lennard-Jones, all atoms, no cutoff, vacuum, kcal/mol). Writes "
                                     "OUT/<trajectory name>/ with traj.dcd, topology.pdb, energies_forces.npz and "
                                     "labels.json; train on OUT/<name>/traj.dcd.\n\n"
                                     "--level gfn2 computes GFN2-xTB (tblite) energies and forces of the whole "
                                     "molecule in vacuum instead (no interaction energies), with --charge and "
                                     "--multiplicity; frames it cannot compute are left out and listed in "
                                     "labels.json.")
    lab.add_argument("topology", help="all-atom topology of the MD: Amber prmtop, CHARMM PSF, GROMACS top or PDB")
    lab.add_argument("trajectories", nargs="+", help="trajectory files of the MD, each labelled on its own")
    lab.add_argument("--out", required=True, help="output folder (one subfolder per trajectory)")
    lab.add_argument("--forcefield", nargs="*", default=None,
                     help="PSF: CHARMM parameter files; PDB: OpenMM XML files (default charmm36.xml); "
                          "GROMACS top: the .gro with the box")
    lab.add_argument("--solvent", choices=["implicit", "vacuum", "explicit"], default=None,
                     help="the MD's solvent for energies and forces (default: explicit when frames have a box, "
                          "implicit OBC2 for a prmtop, else vacuum)")
    lab.add_argument("--cutoff-nm", type=positive, default=1.2, help="non-bonded cutoff of implicit/explicit solvent")
    lab.add_argument("--ligand", default=None, help="mdtraj selection; unset = detect (as training does)")
    lab.add_argument("--level", choices=LEVELS, default="mm",
                     help="mm: the force field through OpenMM; gfn2: GFN2-xTB (tblite), kcal/mol and kcal/mol/Å")
    lab.add_argument("--charge", type=int, default=None, help="total charge of the molecule (--level gfn2; unset: 0)")
    lab.add_argument("--multiplicity", type=count(1), default=None,
                     help="spin multiplicity 2S+1 (--level gfn2; unset: 1, closed shell)")
    add_output_flags(lab, "overwrite existing labels")
    lab.set_defaults(func=run)


def run(args) -> None:
    if args.level == "mm" and (args.charge is not None or args.multiplicity is not None):
        raise HemeplmError("--charge and --multiplicity are for --level gfn2 (the force field sets the charges)")
    dirs = label_trajectories(args.topology, args.trajectories, args.out, forcefield=args.forcefield,
                              solvent=args.solvent, cutoff_nm=args.cutoff_nm, ligand=args.ligand, force=args.force,
                              progress=not args.quiet, level=args.level, charge=args.charge or 0,
                              multiplicity=args.multiplicity or 1)
    for d in dirs:
        print(f"{d}: traj.dcd, topology.pdb, energies_forces.npz, labels.json")
