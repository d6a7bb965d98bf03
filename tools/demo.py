"""The end of ``make demo``: generate from the demo checkpoint and evaluate on the held-out MD.

    python tools/demo.py runs/demo [--samples 4] [--steps 50] [--long-frames 1000]

The held-out split is the last ``data.split[2]`` of each training trajectory
(never seen in training or validation). From its first frame the model
forecasts as many frames as the held-out span covers (at the model's lag);
it also inpaints the ligand into the held-out frames at the model's frame
spacing. Both are evaluated against the held-out MD beside the static,
random-walk and prior baselines (the prior: the same checkpoint with its
denoiser's output zeroed, :meth:`~hemeplm.generate.sampler.Generator.prior`, sampled
with the same tasks and seed). A long forecast by the model (``--long-frames``,
one sample from the first held-out frame; no prior, to keep it short) is
checked for validity only: bonds, clashes and ligand validity over all its
frames and over its last :data:`LONG_TAIL`, beside the held-out MD's own
(``long_forecast_validity.json``). The tables are printed and saved in ``RUN/eval/``
(``tables.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from hemeplm.data.dataset import split_bounds
from hemeplm.errors import HemeplmError
from hemeplm.io import atomic_write_bytes
from hemeplm.evaluate.report import json_ready, print_table
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.generate.sampler import Sampler, run_task

#: the long forecast's validity is also reported over its last this many frames
LONG_TAIL = 100
#: the lines of the results file between which ``--results`` writes the tables
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"


def held_out(gen: Sampler, ev: Path) -> tuple[Path, Path, Path, int, float]:
    """Write the system's topology and the held-out frames of the first training trajectory.

    Returns:
        topology PDB; the held-out XTC (kept atoms, Å superposed like training); the same frames
        every ``data.lag``-th, at the model's frame spacing (what inpainting is given, so that
        inpainted frame i pairs with reference frame i); held-out frame count; dt (ps).
    """
    import mdtraj

    from hemeplm.generate.sampler import load_frames

    data = gen.cfg.data
    segs, dt = load_frames(gen, data.topology, [data.trajectories[0]])
    lo, hi = split_bounds(len(segs[0]), data.split)[2]
    ev.mkdir(parents=True, exist_ok=True)
    topology = ev / "system.pdb"
    topology.write_text(gen.model.static_info["topology_pdb"])
    paths = []
    for name, stride in (("heldout", 1), ("heldout_model_dt", data.lag)):
        xyz = segs[0][lo:hi:stride].cpu().numpy() / 10.0
        paths.append(ev / f"{name}.xtc")
        mdtraj.Trajectory(xyz, gen.model.topology(), time=np.arange(len(xyz)) * stride * dt).save(
            str(paths[-1]), force_overwrite=True)
    return topology, *paths, hi - lo, dt


def long_validity(topology: Path, reference: Path, trajectory: str | Path) -> dict[str, dict]:
    """Validity of a long generated trajectory, all its frames and its last :data:`LONG_TAIL`, against the held-out MD.

    Returns:
        ``{"all": metrics, "last": metrics}``, each in :func:`~hemeplm.evaluate.print_table`'s layout:
        ``model`` holds the trajectory's validity, ``info.reference`` the held-out MD's own.
    """
    from hemeplm.data.load import load_system
    from hemeplm.evaluate.geometry import build_geometry
    from hemeplm.evaluate.trajectory import fit_reference
    from hemeplm.evaluate.checks import validity

    md = load_system(topology, [reference])
    geom = build_geometry(md.topology, md.ligand, md.segments[0][0], topology)
    ref = fit_reference(geom, md.segments, md.timestep_ps, 1, md.timestep_ps, reference)
    info = {"reference": validity(ref.frames, ref)}
    frames = load_system(topology, [trajectory]).segments[0]
    return {"all": {"model": validity(frames, ref), "info": info},
            "last": {"model": validity(frames[-LONG_TAIL:], ref), "info": info}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--long-frames", type=int, default=1000,
                   help="frames of the long forecast checked for validity (0: none)")
    p.add_argument("--results", default=None, metavar="FILE.md",
                   help="also write the tables, with the commit and machine, between the <!-- demo:begin --> and "
                        "<!-- demo:end --> lines of FILE.md (make demo: docs/results.md)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    gen = Sampler.from_checkpoint(run / "ckpt.pt", steps=args.steps, progress=True)
    generators = {"model": gen, "prior": gen.prior()}
    ev = run / "eval"
    topology, ref, ref_model_dt, n_frames, dt = held_out(gen, ev)

    def generate(name: str, **kwargs) -> dict[str, dict]:
        """run_task for the model (``ev/NAME.xtc``) and the prior (``ev/NAME_prior.xtc``), same seed."""
        return {who: run_task(g, topology=topology, frames_file=ref, seed=0, force=True,
                              out=ev / f"{name}{'' if who == 'model' else '_' + who}.xtc", **kwargs)
                for who, g in generators.items()}

    n_model = (n_frames - 1) // gen.cfg.data.lag + 1  # held-out frames at the model's spacing
    runs = {"forecast": (ref, f"{n_frames} frames ({n_frames * dt:.0f} ps)",
                         dict(task="forecast", start=0, num_frames=n_model, num_samples=args.samples))}
    if bool(gen.model.token_is_ligand.any()):
        runs["inpaint"] = (ref_model_dt, f"{n_model} frames every {gen.frame_ps:g} ps",
                           dict(task="inpaint", num_samples=1))
    tables, headings = {}, {}
    for name, (reference, what, kwargs) in runs.items():
        out = generate(name, **kwargs)
        metrics = evaluate_trajectories(topology, [reference], out["model"]["trajectories"], ev / name,
                                        task=kwargs["task"], generated_timestep_ps=out["model"]["timestep_ps"],
                                        prior=out["prior"]["trajectories"], force=True,
                                        ligand_file=gen.cfg.data.ligand_file)
        tables[name] = print_table(metrics)
        headings[name] = f"{name}: model vs baselines on the held-out {what}"
        print(f"\n== {headings[name]} ==")
        print(tables[name])
    if args.long_frames > 0:
        t0 = time.time()
        out = run_task(gen, "forecast", topology, ref, ev / "long_forecast.xtc", start=0, num_frames=args.long_frames,
                       seed=0, force=True)
        found = long_validity(topology, ref, out["trajectories"][0])
        span = (args.long_frames - 1) * gen.frame_ps
        tables["long_forecast"] = "\n".join([
            f"all {args.long_frames} frames:", print_table(found["all"]),
            f"last {min(LONG_TAIL, args.long_frames)} frames:", print_table(found["last"])])
        wall = round(time.time() - t0, 1)
        (ev / "long_forecast_validity.json").write_text(json.dumps(json_ready(
            {"frames": args.long_frames, "span_ps": span, "sampling_wall_seconds": out["wall_seconds"],
             "wall_seconds": wall, **found}), indent=2))
        headings["long_forecast"] = (f"long forecast: {args.long_frames} frames ({span:.0f} ps) from the first held-out "
                                     f"frame, validity vs the held-out MD ({out['wall_seconds']:.0f} s sampling, "
                                     f"{wall:.0f} s in all)")
        print(f"\n== {headings['long_forecast']} ==")
        print(tables["long_forecast"])
    (ev / "tables.json").write_text(json.dumps(tables, indent=2))
    if args.results:
        write_results(Path(args.results), tables, headings, run)
    return tables


def write_results(path: Path, tables: dict[str, str], headings: dict[str, str], run: Path) -> None:
    """Replace the part of ``path`` between :data:`BEGIN` and :data:`END` with the tables and their provenance."""
    text = path.read_text() if path.exists() else ""
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise HemeplmError(f"has no {BEGIN} ... {END} section to write the tables into", path)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    ckpt = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=True)
    body = [f"Written by `make demo` on {time.strftime('%Y-%m-%d')} at commit `{commit or 'unknown'}`: "
            f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, checkpoint "
            f"`{run / 'ckpt.pt'}` at step {ckpt['step']}.", ""]
    for name, table in tables.items():
        body += [f"**{headings[name]}**", "", "```", table, "```", ""]
    head, rest = text.split(BEGIN, 1)
    atomic_write_bytes(path, (head + BEGIN + "\n" + "\n".join(body) + END + rest.split(END, 1)[1]).encode())


if __name__ == "__main__":
    try:
        main()
    except HemeplmError as exc:
        raise SystemExit(f"tools/demo.py: error: {exc}")
