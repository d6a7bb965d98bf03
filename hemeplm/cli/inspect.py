"""``hemeplm inspect``: what the loader makes of a topology and its trajectories."""

from __future__ import annotations

import json

from hemeplm.cli.options import HelpFormatter, add_truncated_option, positive
from hemeplm.data.load import inspect_system


def add_parser(sub) -> None:
    """Add ``hemeplm inspect`` to the ``hemeplm`` subparsers."""
    q = sub.add_parser("inspect", help="summarise a topology and its trajectories", formatter_class=HelpFormatter)
    q.add_argument("topology", help="topology file (PDB, PDB.gz, PSF, prmtop, GRO, HDF5)")
    q.add_argument("trajectories", nargs="*", help="trajectory files, one segment each (none: the topology's frame)")
    q.add_argument("--ligand", default=None, help="mdtraj selection; 'none' for protein only; unset = detect")
    q.add_argument("--hydrogens", action="store_true", help="keep hydrogens (unset: heavy atoms only)")
    q.add_argument("--timestep-ps", type=positive, default=None,
                   help="time between frames (unset: from the files; a DCD carries none)")
    q.add_argument("--forcefield", nargs="*", default=[],
                   help="files giving partial charges: a GROMACS .top for a .gro, OpenMM XML for a PDB")
    add_truncated_option(q)
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=run)


def run(args) -> None:
    report = inspect_system(args.topology, args.trajectories, ligand=args.ligand,
                            hydrogens=args.hydrogens, timestep_ps=args.timestep_ps, forcefield=args.forcefield,
                            truncated=args.truncated or "error")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    lig = report["ligand"]
    kept = "protein and ligand atoms" if report["hydrogens"] else "heavy atoms of protein and ligand"
    print(f"{args.topology}: {report['n_atoms_input']} atoms in the input, {report['n_atoms']} in the model "
          f"({kept}), {report['n_residues']} protein residues, "
          f"{report['n_frames']} frames every {report['timestep_ps']} ps in {report['n_segments']} segment(s)")
    print(f"ligand: {lig['n_atoms']} atoms in {len(lig['residues'])} residue(s) "
          f"{sorted(set(lig['residues']))}, elements {lig['elements']}")
