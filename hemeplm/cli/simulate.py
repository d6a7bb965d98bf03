"""``hemeplm simulate``: OpenMM MD that makes training data (resumable)."""

from __future__ import annotations

import shutil
from pathlib import Path

from hemeplm.cli.options import HelpFormatter, add_output_flags, count, positive
from hemeplm.errors import HemeplmError
from hemeplm.forcefield import simulate as sim


def add_parser(sub) -> None:
    """Add ``hemeplm simulate`` to the ``hemeplm`` subparsers."""
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
    s.add_argument("--steps", type=count(1), default=50_000, help="recorded MD steps")
    s.add_argument("--equilibrate-steps", type=count(0), default=0, help="unrecorded steps after minimisation")
    s.add_argument("--report-every", type=count(1), default=250, help="steps between saved frames")
    s.add_argument("--timestep-fs", type=positive, default=4.0, help="integration time step (fs)")
    s.add_argument("--temperature", type=positive, default=300.0, help="kelvin")
    s.add_argument("--hmr-mass", type=positive, default=3.0, help="hydrogen mass (amu) for repartitioning")
    s.add_argument("--no-hmr", action="store_true", help="no hydrogen mass repartitioning (use <= 2 fs)")
    s.add_argument("--solvent", choices=["implicit", "vacuum", "explicit"],
                   help="default: implicit (OBC2) for prmtop, explicit TIP3P for PDB (implicit for a PDB: "
                        "Amber14 + OBC2, protein without heme)")
    s.add_argument("--seed", type=count(0), default=0, help="seed of the initial velocities and the Langevin noise")
    s.add_argument("--save-every", type=count(1), default=10, help="frames between checkpoints")
    s.add_argument("--threads", type=count(1), default=None, help="CPU platform threads (unset: OpenMM's choice)")
    s.add_argument("--platform", choices=["CUDA", "OpenCL", "CPU", "Reference"], default=None,
                   help="OpenMM platform (unset: the fastest available)")
    s.add_argument("--pressure", type=positive, default=1.0,
                   help="bar, Monte Carlo barostat in explicit solvent (NPT)")
    s.add_argument("--ligand", default=None,
                   help="mdtraj selection of the ligand for the interaction labels (unset: detected)")
    add_output_flags(s, "start over, deleting a previous run in --out")
    s.set_defaults(func=run)


def run(args) -> None:
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
