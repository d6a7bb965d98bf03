"""``hemeplm relax``: restrained OpenMM minimisation of generated frames; the relaxation options
that ``sample.py --relax`` shares."""

from __future__ import annotations

from hemeplm.cli.options import HelpFormatter, add_output_flags, count, non_negative, positive
from hemeplm.forcefield.relax import relax_trajectories, RelaxConfig


def add_parser(sub) -> None:
    """Add ``hemeplm relax`` to the ``hemeplm`` subparsers."""
    r = sub.add_parser("relax", help="restrained OpenMM minimisation of generated frames (hydrogens rebuilt), "
                                     "energies, optional Boltzmann weights", formatter_class=HelpFormatter)
    r.add_argument("--topology", required=True, help="topology of the generated frames (the PDB sample.py writes)")
    r.add_argument("--frames", required=True, nargs="+", help="generated trajectories")
    r.add_argument("--out", required=True, help="OUT.xtc or OUT.dcd (OUT_000.xtc... for several trajectories), "
                                                "with OUT.pdb, OUT.json and OUT.npz")
    add_relax_options(r)
    add_output_flags(r, "overwrite existing outputs")
    r.set_defaults(func=run)


def run(args) -> None:
    summary = relax_trajectories(args.topology, args.frames, args.out,
                                 forcefield_topology=args.relax_forcefield_topology, cfg=relax_config(args),
                                 force=args.force, progress=not args.quiet)
    rw = summary["reweight"]
    print(f"{args.out}: relaxed {summary['frames_relaxed']} of {summary['frames_total']} frames "
          f"({summary['seconds_per_frame']:.2f} s per frame), {len(summary['failed'])} failed; "
          f"heavy-atom RMSD {summary['rmsd_A']['mean']:.3f} A; energy {summary['energy_before_kcal_mol']['mean']:.1f}"
          f" -> {summary['energy_after_kcal_mol']['mean']:.1f} kcal/mol (mean)"
          + (f"; weights ESS {rw['ess']:.2f}" if rw else ""))
    for f in summary["failed"]:
        print(f"  failed: {f['file']} frame {f['frame']}: {f['reason']}")


def add_relax_options(parser, prefix: str = "") -> None:
    """Add the relaxation options to an argparse ``parser``: ``--{prefix}restraint`` etc. and ``--reweight``.

    ``hemeplm relax`` uses no prefix, ``sample.py`` the prefix ``relax-``; the values land in
    ``args.relax_*`` and ``args.reweight`` either way (:func:`relax_config`).
    """
    d = RelaxConfig()
    p = f"--{prefix}"
    parser.add_argument(f"{p}forcefield-topology", dest="relax_forcefield_topology", default=None, metavar="FILE",
                        help="the training MD's force field: an Amber prmtop (.prmtop/.parm7), or a PDB prepared "
                             "with CHARMM36 as 'hemeplm simulate --pdb' does (default: the generated topology PDB)")
    parser.add_argument(f"{p}restraint", dest="relax_restraint", type=non_negative, metavar="K",
                        default=d.restraint_kcal_mol_A2,
                        help="k of the restraint 1/2 k |x - x0|^2 on every generated heavy atom, kcal/mol/A^2 "
                             f"(default {d.restraint_kcal_mol_A2:g})")
    parser.add_argument(f"{p}max-iterations", dest="relax_max_iterations", type=count(0), metavar="N",
                        default=d.max_iterations,
                        help=f"minimiser iterations (0: until converged; default {d.max_iterations})")
    parser.add_argument(f"{p}md-steps", dest="relax_md_steps", type=count(0), default=d.md_steps, metavar="N",
                        help=f"restrained MD steps of {d.md_timestep_fs:g} fs after minimising, then minimise again "
                             "(default 0)")
    parser.add_argument(f"{p}solvent", dest="relax_solvent", choices=["implicit", "vacuum"], default=None,
                        help="default: implicit (OBC2) for a prmtop, vacuum for a PDB")
    parser.add_argument(f"{p}temperature", dest="relax_temperature", type=positive, default=d.temperature_k, metavar="T",
                        help=f"kelvin, for the MD and the weights (default {d.temperature_k:g})")
    parser.add_argument(f"{p}platform", dest="relax_platform", default=None, metavar="NAME",
                        help="OpenMM platform (default: the fastest available)")
    parser.add_argument(f"{p}seed", dest="relax_seed", type=count(0), default=d.seed, metavar="N",
                        help="MD velocities and noise")
    parser.add_argument("--reweight", action="store_true",
                        help="Boltzmann weights exp(-U/kT) of the relaxed frames, with their effective sample size")


def relax_config(args) -> RelaxConfig:
    """The :class:`~hemeplm.forcefield.relax.RelaxConfig` of the options :func:`add_relax_options` added."""
    return RelaxConfig(restraint_kcal_mol_A2=args.relax_restraint, max_iterations=args.relax_max_iterations,
                       md_steps=args.relax_md_steps, solvent=args.relax_solvent, temperature_k=args.relax_temperature,
                       reweight=args.reweight, platform=args.relax_platform, seed=args.relax_seed)
