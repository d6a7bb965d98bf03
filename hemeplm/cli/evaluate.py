"""``hemeplm evaluate``: generated trajectories against reference MD (metrics.json, figures)."""

from __future__ import annotations

from pathlib import Path

from hemeplm.cli.options import HelpFormatter, count, positive
from hemeplm.evaluate.posebusters import MAX_FRAMES as POSEBUSTERS_FRAMES
from hemeplm.evaluate.report import print_table
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.tasks import TASKS


def add_parser(sub) -> None:
    """Add ``hemeplm evaluate`` to the ``hemeplm`` subparsers."""
    e = sub.add_parser("evaluate", formatter_class=HelpFormatter, help="compare generated trajectories with reference MD (metrics.json, figures)")
    e.add_argument("--topology", required=True, help="topology of the reference trajectories")
    e.add_argument("--reference", nargs="+", required=True, help="reference MD trajectory file(s)")
    e.add_argument("--generated", nargs="+", required=True,
                   help="generated trajectory file(s), as sampled (projected): the 'model' column")
    e.add_argument("--prior", nargs="+", default=None, metavar="GEN",
                   help="trajectory file(s) sampled from the same checkpoint with the network output zeroed, "
                        "like --generated: evaluated as the 'prior' baseline column")
    e.add_argument("--raw", nargs="+", default=None, metavar="GEN",
                   help="the model's trajectory file(s) sampled with --project-steps 0 (the network's raw output): "
                        "the 'raw' column, first in the table")
    e.add_argument("--raw-prior", nargs="+", default=None, metavar="GEN",
                   help="the prior's trajectory file(s) sampled with --project-steps 0: the 'raw_prior' column, "
                        "beside 'raw'")
    e.add_argument("--generated-topology", default=None,
                   help="topology of the generated (--prior, --raw, --raw-prior) files (default: the PDB sample.py "
                        "wrote beside them, else --topology)")
    e.add_argument("--conditioned-frames", nargs="*", type=int, default=None, metavar="I",
                   help="frames every generated trajectory was given (negative: from the end), left out of every "
                        "metric; none after the option: no frame (unset: the sample summaries' conditioned_frames, "
                        "else by --task: forecast 0, tps the first and last, inpaint none)")
    e.add_argument("--ligand-file", default=None,
                   help="mol2/SDF of the ligand: bond orders for the PoseBusters checks (default: the topology's)")
    e.add_argument("--posebusters-frames", type=count(0), default=POSEBUSTERS_FRAMES,
                   help=f"PoseBusters checks at most this many evenly spaced frames per column; 0: none "
                        f"(default {POSEBUSTERS_FRAMES})")
    e.add_argument("--weights", default=None, metavar="OUT.npz",
                   help="Boltzmann weights from 'hemeplm relax --reweight', one per generated frame (the --generated "
                        "files concatenated in order): weight the model column's distributional metrics")
    e.add_argument("--ligand", default=None, help="mdtraj selection; 'none' for protein only; unset = detect")
    e.add_argument("--lag-ps", type=positive, default=None, help="TICA lag time (default: one reference frame)")
    e.add_argument("--generated-timestep-ps", type=positive, default=None,
                   help="time between generated frames (unset: the sample summaries' timestep_ps, else the "
                        "generated files' own frame times; never the reference's)")
    e.add_argument("--task", choices=TASKS, default="forecast", help="tps adds transition-path metrics")
    e.add_argument("--seed", type=count(0), default=0, help="seed of the random-walk baseline and k-means")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--force", action="store_true", help="overwrite an existing metrics.json")
    e.set_defaults(func=run)


def run(args) -> None:
    metrics = evaluate_trajectories(args.topology, args.reference, args.generated, args.out, ligand=args.ligand,
                                    lag_ps=args.lag_ps, task=args.task, generated_topology=args.generated_topology,
                                    generated_timestep_ps=args.generated_timestep_ps, seed=args.seed,
                                    force=args.force, prior=args.prior, ligand_file=args.ligand_file,
                                    posebusters_frames=args.posebusters_frames, weights=args.weights,
                                    raw=args.raw, raw_prior=args.raw_prior,
                                    conditioned_frames=args.conditioned_frames)
    print(print_table(metrics))
    print(f"{Path(args.out) / 'metrics.json'}; figures: {', '.join(metrics['info']['figures'])}")
    if metrics["info"]["tica"].startswith("skipped"):
        print(f"TICA {metrics['info']['tica']}")
