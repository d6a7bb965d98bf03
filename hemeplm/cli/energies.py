"""``hemeplm energies``: a checkpoint's energy model on any trajectory of its system."""

from __future__ import annotations

from pathlib import Path

from hemeplm.cli.options import HelpFormatter, add_output_flags, add_truncated_option, count, positive
from hemeplm.device import resolve_device
from hemeplm.data.load import frame_span
from hemeplm.generate import energies, molecular
from hemeplm.generate.sampler import load_checked, Sampler
from hemeplm.io import check_outputs
from hemeplm.train.checkpoint import load_checkpoint
from hemeplm.train.molecular import KIND


def add_parser(sub) -> None:
    """Add ``hemeplm energies`` to the ``hemeplm`` subparsers."""
    en = sub.add_parser("energies", help="predicted energies, forces and per-residue interaction energies",
                        formatter_class=HelpFormatter,
                        description="Predict with a checkpoint's energy model for any trajectory of its system "
                                    "(MD or generated). Writes OUT/energies.npz, residue_interaction.csv "
                                    "(per-residue mean and std), residue_interaction.png and "
                                    "residue_interaction.pdb (mean in the B-factor column).\n\n"
                                    "A molecular energy model (trained with qm.molecule set) writes OUT/energies.npz "
                                    "with energy_kcal_mol and forces_kcal_mol_A for any frames of its molecules, "
                                    "atoms in any order; --compare scores them into OUT/compare/metrics.json. One "
                                    "trained on a fragment set (chignolin-fragments) predicts a whole peptide "
                                    "from its fragments, AI2BMD-style.")
    en.add_argument("--ckpt", required=True, help="checkpoint written by train.py (runs/NAME/ckpt.pt)")
    en.add_argument("--topology", required=True, help="topology of --frames (a generated file's PDB, or the MD's)")
    en.add_argument("--frames", required=True, help="trajectory to predict for")
    en.add_argument("--out", required=True, help="output folder")
    en.add_argument("--start", type=count(0), default=None, help="first frame to predict for, from 0 (unset: 0)")
    en.add_argument("--stop", type=count(1), default=None, help="frame to stop before (unset: the end)")
    en.add_argument("--timestep-ps", type=positive, default=None,
                    help="time between the frames of --frames (unset: from the file; a DCD carries none)")
    add_truncated_option(en, unset="the checkpoint's data.truncated")
    en.add_argument("--compare", action="store_true",
                    help="also compare with the labels in energies_forces.npz beside --frames: metrics.json "
                         "(R², MAE, Pearson; interaction fluctuation R² over pocket residues beside the "
                         "training-mean baseline) and figures in OUT/compare/")
    en.add_argument("--device", default="auto",
                    help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    add_output_flags(en, "overwrite existing outputs")
    en.set_defaults(func=run)


def run(args) -> None:
    import torch

    if load_checkpoint(args.ckpt).get("kind") == KIND:
        device = resolve_device(args.device)
        for path in molecular.write(args.ckpt, args.topology, args.frames, args.out, args.start, args.stop,
                                    args.compare, args.force, device):
            print(path)
        return
    out = Path(args.out)
    check_outputs([out / f for f in energies.FILES] + ([out / "compare" / "metrics.json"] if args.compare else []),
                  args.force, out)
    gen = Sampler.from_checkpoint(args.ckpt, device=args.device)
    system = load_checked(gen, args.topology, [args.frames], args.truncated, args.timestep_ps)
    span = frame_span(len(system.segments[0]), args.start, args.stop, args.frames)
    frames = torch.from_numpy(system.segments[0][span])
    paths = energies.write(gen.model, frames, args.out, force=args.force, progress=not args.quiet)
    if args.compare:
        paths += energies.compare(gen.model, system, span, args.out, args.frames)
    for path in paths:
        print(path)
