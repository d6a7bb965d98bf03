"""The ``hemeplm`` command: ``inspect``, ``simulate``, ``evaluate``, ``bench``.

Each subcommand is a small function over the package's API; errors of type
:class:`~hemeplm.errors.HemeplmError` are printed as one line and exit 2.
Training and sampling are the scripts ``train.py`` and ``sample.py`` beside the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from hemeplm import __version__
from hemeplm.errors import HemeplmError

EPILOG = """training and sampling are scripts in the repository root:
  python train.py [--config configs/demo.yaml] [key=value ...]   learn from trajectories
  python sample.py --ckpt runs/NAME/ckpt.pt --task forecast ...   generate
(see python train.py --help and python sample.py --help)"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(default: X)" to every option's help,
    unless the default is None or False (the help then says what unset means) or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        shown = not unset and "default" not in text
        if shown and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
            return f"{text} (default: %(default)s)"
        return text


def _cmd_inspect(args) -> None:
    from hemeplm.data.load import inspect_system

    report = inspect_system(args.topology, args.trajectories, ligand=args.ligand,
                            hydrogens=args.hydrogens, timestep_ps=args.timestep_ps, forcefield=args.forcefield)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    lig = report["ligand"]
    print(f"{args.topology}: {report['n_atoms']} atoms, {report['n_residues']} protein residues, "
          f"{report['n_frames']} frames every {report['timestep_ps']} ps in {report['n_segments']} segment(s)")
    print(f"ligand: {lig['n_atoms']} atoms in {len(lig['residues'])} residue(s) "
          f"{sorted(set(lig['residues']))}, elements {lig['elements']}")


def _cmd_simulate(args) -> None:
    from hemeplm.forcefield import simulate as sim

    cfg = sim.SimulateConfig(steps=args.steps, equilibrate_steps=args.equilibrate_steps, report_every=args.report_every, timestep_fs=args.timestep_fs,
                             temperature_k=args.temperature, hydrogen_mass_amu=None if args.no_hmr else args.hmr_mass,
                             seed=args.seed, solvent=args.solvent or ("implicit" if args.prmtop else "explicit"),
                             save_every_frames=args.save_every, threads=args.threads,
                             platform=args.platform or sim.fastest_platform(), pressure_bar=args.pressure,
                             ligand=args.ligand)
    if bool(args.prmtop) == bool(args.pdb):
        raise HemeplmError("give either --prmtop with --inpcrd, or --pdb")
    out = Path(args.out)
    if args.force and out.exists():
        for name in sim.RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if args.prmtop:
        if not args.inpcrd:
            raise HemeplmError("--prmtop needs --inpcrd")
        parts = sim.prepare_amber(args.prmtop, args.inpcrd, cfg)
        inputs = {"prmtop": sim.file_id(args.prmtop), "inpcrd": sim.file_id(args.inpcrd)}
    else:
        parts = sim.prepare_pdb(args.pdb, cfg)
        inputs = {"pdb": sim.file_id(args.pdb)}
    run = sim.MDRun(*parts, cfg=cfg, out=out, inputs=inputs, progress=not args.quiet)
    run.run(progress=not args.quiet)
    print(f"{out}: {run.n_frames} frames on {cfg.platform}, topology.pdb, traj.dcd, energies_forces.npz, "
          "settings.json")


def _cmd_label(args) -> None:
    from hemeplm.forcefield.labels import label_trajectories

    dirs = label_trajectories(args.topology, args.trajectories, args.out, forcefield=args.forcefield,
                              solvent=args.solvent, cutoff_nm=args.cutoff_nm, ligand=args.ligand, force=args.force,
                              progress=not args.quiet)
    for d in dirs:
        print(f"{d}: traj.dcd, topology.pdb, energies_forces.npz, labels.json")


def _cmd_energies(args) -> None:
    import torch

    from hemeplm.generate import energies
    from hemeplm.generate.sampler import Generator, load_checked

    gen = Generator.from_checkpoint(args.ckpt, device=args.device)
    system = load_checked(gen, args.topology, [args.frames])
    span = slice(args.start, args.stop)
    frames = torch.from_numpy(system.segments[0][span])
    paths = energies.write(gen.model, frames, args.out, force=args.force, progress=not args.quiet)
    if args.compare:
        paths += energies.compare(gen.model, system, span, args.out, args.frames)
    for path in paths:
        print(path)


def _cmd_relax(args) -> None:
    from hemeplm.forcefield.relax import RelaxConfig, relax_trajectories

    summary = relax_trajectories(args.topology, args.frames, args.out,
                                 forcefield_topology=args.relax_forcefield_topology, cfg=RelaxConfig.from_args(args),
                                 force=args.force, progress=not args.quiet)
    rw = summary["reweight"]
    print(f"{args.out}: relaxed {summary['frames_relaxed']} of {summary['frames_total']} frames "
          f"({summary['seconds_per_frame']:.2f} s per frame), {len(summary['failed'])} failed; "
          f"heavy-atom RMSD {summary['rmsd_A']['mean']:.3f} A; energy {summary['energy_before_kcal_mol']['mean']:.1f}"
          f" -> {summary['energy_after_kcal_mol']['mean']:.1f} kcal/mol (mean)"
          + (f"; weights ESS {rw['ess']:.2f}" if rw else ""))
    for f in summary["failed"]:
        print(f"  failed: {f['file']} frame {f['frame']}: {f['reason']}")


def _add_output_flags(parser: argparse.ArgumentParser, force: str) -> None:
    """``--force`` (``force`` says what it overwrites) and ``--quiet``, for subcommands that write outputs."""
    parser.add_argument("--force", action="store_true", help=force)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemeplm", description="Generative surrogate of protein–ligand MD.",
                                epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("inspect", help="summarise a topology and its trajectories", formatter_class=HelpFormatter)
    q.add_argument("topology", help="topology file (PDB, PDB.gz, PSF, prmtop, GRO, HDF5)")
    q.add_argument("trajectories", nargs="*", help="trajectory files, one segment each (none: the topology's frame)")
    q.add_argument("--ligand", default=None, help="mdtraj selection; 'none' for protein only; unset = detect")
    q.add_argument("--hydrogens", action="store_true", help="keep hydrogens (unset: heavy atoms only)")
    q.add_argument("--timestep-ps", type=float, default=None,
                   help="time between frames (unset: from the files; a DCD carries none)")
    q.add_argument("--forcefield", nargs="*", default=[],
                   help="files giving partial charges: a GROMACS .top for a .gro, OpenMM XML for a PDB")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("simulate", help="run OpenMM MD to make training data (resumable)",
                       formatter_class=HelpFormatter,
                       description="OpenMM MD to make training data. Frames stream to OUT/traj.dcd (full "
                                   "precision); energies, forces and per-residue protein-ligand interaction "
                                   "energies go to OUT/energies_forces.npz when the run completes. Running the "
                                   "same command again after a kill continues from the last saved frame.")
    s.add_argument("--prmtop", help="Amber topology (with --inpcrd); parameterised as it is")
    s.add_argument("--inpcrd", help="Amber coordinates for --prmtop")
    s.add_argument("--pdb", help="PDB (e.g. 3CQV) prepared with PDBFixer + CHARMM36; HEM becomes HEME")
    s.add_argument("--out", required=True, help="output folder (topology.pdb, traj.dcd, energies_forces.npz, "
                                                "settings.json); a run there is continued")
    s.add_argument("--steps", type=int, default=50_000, help="recorded MD steps")
    s.add_argument("--equilibrate-steps", type=int, default=0, help="unrecorded steps after minimisation")
    s.add_argument("--report-every", type=int, default=250, help="steps between saved frames")
    s.add_argument("--timestep-fs", type=float, default=4.0, help="integration time step (fs)")
    s.add_argument("--temperature", type=float, default=300.0, help="kelvin")
    s.add_argument("--hmr-mass", type=float, default=3.0, help="hydrogen mass (amu) for repartitioning")
    s.add_argument("--no-hmr", action="store_true", help="no hydrogen mass repartitioning (use <= 2 fs)")
    s.add_argument("--solvent", choices=["implicit", "vacuum", "explicit"],
                   help="default: implicit (OBC2) for prmtop, explicit TIP3P for PDB")
    s.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and the Langevin noise")
    s.add_argument("--save-every", type=int, default=10, help="frames between checkpoints")
    s.add_argument("--threads", type=int, default=None, help="CPU platform threads (unset: OpenMM's choice)")
    s.add_argument("--platform", choices=["CUDA", "OpenCL", "CPU", "Reference"], default=None,
                   help="OpenMM platform (unset: the fastest available)")
    s.add_argument("--pressure", type=float, default=1.0,
                   help="bar, Monte Carlo barostat in explicit solvent (NPT)")
    s.add_argument("--ligand", default=None,
                   help="mdtraj selection of the ligand for the interaction labels (unset: detected)")
    _add_output_flags(s, "start over, deleting a previous run in --out")
    s.set_defaults(func=_cmd_simulate)
    lab = sub.add_parser("label", help="energy labels for existing all-atom MD (OpenMM rerun)",
                         formatter_class=HelpFormatter,
                         description="Rerun all-atom trajectories through OpenMM: per frame the potential energy, "
                                     "all-atom forces and each protein residue's interaction energy with the ligand "
                                     "(Coulomb + Lennard-Jones, all atoms, no cutoff, vacuum, kcal/mol). Writes "
                                     "OUT/<trajectory name>/ with traj.dcd, topology.pdb, energies_forces.npz and "
                                     "labels.json; train on OUT/<name>/traj.dcd.")
    lab.add_argument("topology", help="all-atom topology of the MD: Amber prmtop, CHARMM PSF, GROMACS top or PDB")
    lab.add_argument("trajectories", nargs="+", help="trajectory files of the MD, each labelled on its own")
    lab.add_argument("--out", required=True, help="output folder (one subfolder per trajectory)")
    lab.add_argument("--forcefield", nargs="*", default=None,
                     help="PSF: CHARMM parameter files; PDB: OpenMM XML files (default charmm36.xml); "
                          "GROMACS top: the .gro with the box")
    lab.add_argument("--solvent", choices=["implicit", "vacuum", "explicit"], default=None,
                     help="the MD's solvent for energies and forces (default: explicit when frames have a box, "
                          "implicit OBC2 for a prmtop, else vacuum)")
    lab.add_argument("--cutoff-nm", type=float, default=1.2, help="non-bonded cutoff of implicit/explicit solvent")
    lab.add_argument("--ligand", default=None, help="mdtraj selection; unset = detect (as training does)")
    _add_output_flags(lab, "overwrite existing labels")
    lab.set_defaults(func=_cmd_label)

    en = sub.add_parser("energies", help="predicted energies, forces and per-residue interaction energies",
                        formatter_class=HelpFormatter,
                        description="Predict with a checkpoint's energy model for any trajectory of its system "
                                    "(MD or generated). Writes OUT/energies.npz, residue_interaction.csv "
                                    "(per-residue mean and std), residue_interaction.png and "
                                    "residue_interaction.pdb (mean in the B-factor column).")
    en.add_argument("--ckpt", required=True, help="checkpoint written by train.py (runs/NAME/ckpt.pt)")
    en.add_argument("--topology", required=True, help="topology of --frames (a generated file's PDB, or the MD's)")
    en.add_argument("--frames", required=True, help="trajectory to predict for")
    en.add_argument("--out", required=True, help="output folder")
    en.add_argument("--start", type=int, default=None, help="first frame to predict for (unset: 0)")
    en.add_argument("--stop", type=int, default=None, help="frame to stop before (unset: the end)")
    en.add_argument("--compare", action="store_true",
                    help="also compare with the labels in energies_forces.npz beside --frames: metrics.json "
                         "(R², MAE, Pearson; interaction fluctuation R² over pocket residues beside the "
                         "training-mean baseline) and figures in OUT/compare/")
    en.add_argument("--device", default="auto",
                    help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    _add_output_flags(en, "overwrite existing outputs")
    en.set_defaults(func=_cmd_energies)

    r = sub.add_parser("relax", help="restrained OpenMM minimisation of generated frames (hydrogens rebuilt), "
                                     "energies, optional Boltzmann weights", formatter_class=HelpFormatter)
    r.add_argument("--topology", required=True, help="topology of the generated frames (the PDB sample.py writes)")
    r.add_argument("--frames", required=True, nargs="+", help="generated trajectories")
    r.add_argument("--out", required=True, help="OUT.xtc or OUT.dcd (OUT_000.xtc... for several trajectories), "
                                                "with OUT.pdb, OUT.json and OUT.npz")
    from hemeplm.forcefield.relax import add_relax_options
    add_relax_options(r)
    _add_output_flags(r, "overwrite existing outputs")
    r.set_defaults(func=_cmd_relax)
    from hemeplm.evaluate.run import add_evaluate_parser
    add_evaluate_parser(sub)
    from hemeplm.cli.bench import add_bench_parser
    add_bench_parser(sub)
    from hemeplm.viewer import add_view_parser
    add_view_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HemeplmError as exc:
        one_line = " ".join(str(exc).splitlines())
        print(f"hemeplm {args.command}: error: {one_line}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
