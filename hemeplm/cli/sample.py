"""Generate trajectories with a trained HemePLM-Diffuse checkpoint.

    python sample.py --ckpt runs/demo/ckpt.pt --task forecast --topology T --frames F \
        [--start I] [--end J] [--num-frames N] [--num-samples S] [--sampler ddim|ancestral] [--steps K] [--project-steps P]
        [--noise-scale TAU] [--restart LEVEL] [--fold-hold SIGMAS] [--lag-ps PS] [--precision P] [--compile]
        [--seed N] --out OUT.xtc

Tasks: forecast (from frame I), tps (from frame I to frame J), inpaint (the ligand,
or the ligand tokens holding the --inpaint-atoms, generated into frames I..J),
upsample (frames I..J become every k-th frame of a finer trajectory). Inpainting
reads frames I..J at the model's frame spacing (data.lag x the training data's, or
--lag-ps for a model trained at several lags), upsampling at k times it; a file
whose spacing does not divide that is refused.
Writes OUT.xtc (OUT_000.xtc... for several samples), OUT.pdb (topology, in the
residue numbering of --topology) and OUT.json (summary, written last), and with
--view OUT.html (samples beside the given MD in a browser); every output is
checked before sampling and written atomically, and nothing is overwritten
without --force. Times: frame i of --frames is at i x its frame spacing, and
generated frame k at the start frame's time plus k x the generated spacing (the
model's; a tps path its real spacing). Every frame gets a confidence score
(uncertainty_A in OUT.json), which can cost a few times the sampling:
--no-confidence skips it. With --relax the generated
frames are then relaxed by a restrained OpenMM minimisation in the training force
field (hemeplm relax; --relax-forcefield-topology, default --topology when it is an
Amber prmtop or a PDB): OUT.relaxed.xtc (OUT.relaxed_000.xtc...), OUT.relaxed.pdb,
OUT.relaxed.json and OUT.relaxed.npz; --reweight adds Boltzmann weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hemeplm.cli.options import (HelpFormatter, add_truncated_option, count, exit_on_error, fraction, non_negative,
                                  positive)
from hemeplm.cli.relax import add_relax_options, relax_config
from hemeplm.config import PRECISIONS
from hemeplm.diffusion import SAMPLERS
from hemeplm.forcefield.relax import AMBER_SUFFIXES, output_files, relax_trajectories, relaxed_path
from hemeplm.generate.sampler import Sampler, run_task, write_json
from hemeplm.io import check_outputs, output_paths
from hemeplm.tasks import TASKS
from hemeplm.viewer import view_sample


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py (runs/NAME/ckpt.pt)")
    p.add_argument("--task", required=True, choices=TASKS, help="what to generate (see above)")
    p.add_argument("--topology", required=True, help="topology of the system the checkpoint was trained on")
    p.add_argument("--frames", required=True, help="trajectory or PDB holding the given frames")
    p.add_argument("--start", type=count(0), default=None, help="index of the start frame, from 0 (unset: 0)")
    p.add_argument("--end", type=count(0), default=None,
                   help="index of the end frame (tps; unset: the last frame; inpaint/upsample: the last frame used)")
    p.add_argument("--end-frames", default=None, help="file holding the tps end frame (unset: --frames)")
    p.add_argument("--timestep-ps", type=positive, default=None,
                   help="time between the frames of --frames and --end-frames (unset: from the files; a DCD "
                        "carries none and is read at 1 ps per frame)")
    add_truncated_option(p, unset="the checkpoint's data.truncated")
    p.add_argument("--num-frames", type=count(2), default=None,
                   help="frames to generate, the start frame included (forecast, tps; unset: one window of the model)")
    p.add_argument("--num-samples", type=count(1), default=1, help="independent samples, generated as one batch")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="diffusion sampler (unset: the checkpoint's diffusion.sampler)")
    p.add_argument("--steps", type=count(1), default=None,
                   help="DDIM steps per window (unset: the checkpoint's diffusion.sample_steps; "
                        "ancestral sampling takes every diffusion step)")
    p.add_argument("--project-steps", type=count(0), default=None,
                   help="steps of the structure projection of each generated window (inter-token bonds, clashes, "
                        "planar peptide bonds and their angles; 0: off, the network's raw output; unset: the "
                        "checkpoint's structure.project_steps); the summary's 'projection' says what it moved")
    p.add_argument("--noise-scale", type=positive, default=None, metavar="TAU",
                   help="sampling temperature: the sampler's starting noise (and a restart's re-noising) times TAU "
                        "(below 1: a narrower spread of generated frames; unset: the checkpoint's "
                        "diffusion.noise_scale)")
    p.add_argument("--restart", type=fraction, default=None, metavar="LEVEL",
                   help="Restart sampling: re-noise each sampled window to the fraction LEVEL of the diffusion steps "
                        "and sample it back (diffusion.restart_steps DDIM steps, or every step for ancestral "
                        "sampling; diffusion.restarts times), which takes out errors of the sampler's path "
                        "(0: off; unset: the checkpoint's diffusion.restart)")
    p.add_argument("--fold-hold", type=non_negative, default=None, metavar="SIGMAS",
                   help="also hold each window's fold in the projection: keep the Cα-Cα distances of its key frame "
                        "(its conditioning frame) within SIGMAS training-MD standard deviations (0: off; unset: the "
                        "checkpoint's structure.fold_sigmas: 0 since the hold became opt-in, 3 in older checkpoints)")
    p.add_argument("--lag-ps", type=positive, default=None, metavar="PS",
                   help="time between generated frames, one of the lags the model was trained at (data.lag and "
                        "data.lags times the training MD's frame spacing): a forecast steps coarse at a long lag "
                        "(unset: data.lag's)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="bfloat16: the networks under bfloat16 autocast (for a GPU; unset: the checkpoint's "
                        "precision)")
    p.add_argument("--compile", action="store_true",
                   help="compile the denoiser with torch.compile (minutes on the first windows, then faster on a GPU)")
    p.add_argument("--inpaint-atoms", default=None,
                   help="mdtraj selection of ligand atoms: the ligand tokens holding them are inpainted whole "
                        "(unset: the whole ligand)")
    p.add_argument("--seed", type=count(0), default=0, help="seed of the sampling noise; the same seed, the same output")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--out", required=True,
                   help="OUT.xtc or OUT.dcd (several samples: OUT_000.xtc, ...), beside it OUT.pdb and OUT.json")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-confidence", action="store_true",
                   help="skip the per-frame confidence score (it can cost a few times the sampling); the summary "
                        "then has no uncertainty_A")
    p.add_argument("--energies", action="store_true",
                   help="add the energy model's predictions for every generated frame to the JSON summary "
                        "(total energy, per-residue interaction energies with the ligand)")
    p.add_argument("--view", action="store_true",
                   help="also write OUT.html: the samples beside the given MD in a browser viewer (hemeplm view)")
    p.add_argument("--relax", action="store_true",
                   help="relax the generated frames in the training force field (see hemeplm relax)")
    add_relax_options(p, prefix="relax-")


def add_parser(sub) -> None:
    """Add ``hemeplm sample`` to the ``hemeplm`` subparsers."""
    p = sub.add_parser("sample", help="generate trajectories with a checkpoint (as python sample.py)",
                       description=__doc__, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> None:
    out = Path(args.out)
    trajs, pdb, summary_path = output_paths(out, args.num_samples)
    html = out.with_suffix(".html")
    check_outputs([*trajs, pdb, summary_path, *([html] if args.view else [])], args.force, out)
    if args.relax:  # refuse before sampling, not after
        output_files(relaxed_path(args.out), args.num_samples, args.force)
    gen = Sampler.from_checkpoint(args.ckpt, device=args.device, steps=args.steps, sampler=args.sampler,
                                  progress=True, project_steps=args.project_steps, fold_sigmas=args.fold_hold,
                                  noise_scale=args.noise_scale, restart=args.restart, lag_ps=args.lag_ps,
                                  precision=args.precision, compile=args.compile)
    summary = run_task(gen, args.task, args.topology, args.frames, args.out, start=args.start, end=args.end,
                       end_file=args.end_frames, num_frames=args.num_frames, num_samples=args.num_samples,
                       seed=args.seed, inpaint_atoms=args.inpaint_atoms, force=args.force,
                       energies=args.energies, confidence=not args.no_confidence, write_summary=False,
                       truncated=args.truncated, timestep_ps=args.timestep_ps)
    if args.view:
        summary["view"] = str(view_sample(summary, html, force=args.force, timestep_ps=args.timestep_ps,
                                          truncated=args.truncated or gen.cfg.data.truncated))
    if args.relax:
        forcefield = args.relax_forcefield_topology
        if forcefield is None and args.topology.lower().endswith((*AMBER_SUFFIXES, ".pdb", ".pdb.gz")):
            forcefield = args.topology
        summary["relax"] = relax_trajectories(summary["topology_pdb"], summary["trajectories"],
                                              relaxed_path(args.out), forcefield_topology=forcefield,
                                              cfg=relax_config(args), force=args.force)
    write_json(summary_path, summary)  # last: a summary means every output is there
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    """``python sample.py``."""
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    exit_on_error("sample.py", lambda: run(args), args.hints)
