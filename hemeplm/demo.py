"""The end of ``make demo``: generate from the demo checkpoint and evaluate on the held-out MD.

    python -m hemeplm.demo runs/demo [--samples 4] [--steps 50]

The held-out split is the last ``data.split[2]`` of each training trajectory
(never seen in training or validation). From its first frame the model
forecasts as many frames as the held-out span covers (at the model's lag);
it also inpaints the ligand into every held-out frame. Both are evaluated
against the held-out MD beside the static and random-walk baselines, and the
tables are printed and saved in ``RUN/eval/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .data.dataset import split_bounds
from .errors import HemeplmError
from .evaluate import evaluate_trajectories, print_table
from .sampling import Generator, run_task


def held_out(gen: Generator, ev: Path) -> tuple[Path, Path, int, float]:
    """Write the system's topology and the held-out frames of the first training trajectory.

    Returns:
        topology PDB, held-out XTC (kept atoms, Å superposed like training), frame count, dt (ps).
    """
    import mdtraj

    from .sampling import load_frames

    data = gen.cfg.data
    segs, dt = load_frames(gen, data.topology, [data.trajectories[0]])
    lo, hi = split_bounds(len(segs[0]), data.split)[2]
    ev.mkdir(parents=True, exist_ok=True)
    topology = ev / "system.pdb"
    topology.write_text(gen.model.static_info["topology_pdb"])
    ref = ev / "heldout.xtc"
    xyz = segs[0][lo:hi].numpy() / 10.0
    mdtraj.Trajectory(xyz, gen.model.topology(), time=np.arange(hi - lo) * dt).save(str(ref), force_overwrite=True)
    return topology, ref, hi - lo, dt


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    gen = Generator.from_checkpoint(run / "ckpt.pt", steps=args.steps, progress=True)
    ev = run / "eval"
    topology, ref, n_frames, dt = held_out(gen, ev)
    lag = gen.cfg.data.lag
    runs = {"forecast": dict(task="forecast", start=0, num_frames=(n_frames - 1) // lag + 1, num_samples=args.samples)}
    if bool(gen.model.token_is_ligand.any()):
        runs["inpaint"] = dict(task="inpaint", num_samples=1)
    tables = {}
    for name, kwargs in runs.items():
        summary = run_task(gen, topology=topology, frames_file=ref, out=ev / f"{name}.xtc", seed=0, force=True,
                           **kwargs)
        metrics = evaluate_trajectories(topology, [ref], summary["trajectories"], ev / name, task=kwargs["task"],
                                        generated_timestep_ps=summary["timestep_ps"], force=True)
        tables[name] = print_table(metrics)
        print(f"\n== {name}: model vs baselines on the held-out {n_frames} frames ({n_frames * dt:.0f} ps) ==")
        print(tables[name])
    (ev / "tables.json").write_text(json.dumps(tables, indent=2))
    return tables


if __name__ == "__main__":
    try:
        main()
    except HemeplmError as exc:
        raise SystemExit(f"hemeplm.demo: error: {exc}")
