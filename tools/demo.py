"""The end of ``make demo``: generate from the demo checkpoint and evaluate on the held-out MD.

    python tools/demo.py runs/demo [--samples 4] [--steps 50] [--long-frames 1000]

The held-out MD is the first whole replica of ``data.held_out`` when the config
names one (``configs/demo.yaml`` does), else the last ``data.split[2]`` of the first
training trajectory; either is never seen in training or validation. From its first frame the model
forecasts as many frames as the held-out span covers (at the model's lag);
it also inpaints the ligand into the held-out frames at the model's frame
spacing. Each task is sampled four times with the same seed: the model and the
prior (the same checkpoint with its denoiser's output ``denoiser.out`` zeroed,
:meth:`~hemeplm.generate.sampler.Sampler.prior`), each raw (``--project-steps 0``: what the
network and the sampler give, ``NAME_raw.xtc``, ``NAME_raw_prior.xtc``) and projected (as
``sample.py`` samples by default, ``NAME.xtc``, ``NAME_prior.xtc``). The tables
(:func:`~hemeplm.evaluate.report.print_table`) headline the raw model beside the raw prior, then the
projected pair, then the static and random-walk baselines and the held-out MD itself; the projection
moves atoms toward the validity checks, so the raw columns are what the network learnt. Frames a task
gave (the forecast's frame 0, the inpainting's protein) are not scored. A long forecast by the model
(``--long-frames``, one sample from the first held-out frame, projected; no prior, to keep it short) is
checked for validity (every check of :mod:`hemeplm.evaluate.checks` over its generated frames and
over its last :data:`LONG_TAIL`, beside the held-out MD's own) and for drift: its Cα RMSD from its start, the
change of its Cα radius of gyration and the pocket residues it keeps, at its end and at the length of the first
training trajectory, beside that MD's own, and how much of the change in size comes at the windows' junctions
(``long_forecast_validity.json``). The
tables are printed and saved in ``RUN/eval/`` (``tables.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from hemeplm.data.load import load_system
from hemeplm.errors import HemeplmError
from hemeplm.io import atomic_write_bytes
from hemeplm.evaluate.checks import validity
from hemeplm.generate.heldout import held_out, held_out_frames
from hemeplm.evaluate.geometry import build_geometry
from hemeplm.evaluate.report import json_ready, print_table
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.evaluate.trajectory import END_FRACTION, drift, fit_reference, window_swelling
from hemeplm.generate.sampler import Sampler, load_frames, run_task
from hemeplm.train.checkpoint import load_checkpoint

#: the long forecast's validity is also reported over its last this many frames
LONG_TAIL = 100
#: the lines of the results file between which ``--results`` writes the tables
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"


def long_validity(topology: Path, reference: Path, trajectory: str | Path, frame_ps: float,
                  md: np.ndarray, md_ps: float, windows: tuple[list[int], int, int]) -> dict[str, dict]:
    """Validity of a long generated forecast, its generated frames (all but the given frame 0) and its last
    :data:`LONG_TAIL`, against the held-out MD; and how far it went from its start
    (:func:`~hemeplm.evaluate.trajectory.drift`) at its end and at the length of the first training trajectory ``md``
    (F, A, 3) Å, beside that MD's own from its first frame; and where its size changes
    (:func:`~hemeplm.evaluate.trajectory.window_swelling`, the forecast's ``windows``: start frames, frames given to
    each later window, frames per window).

    Returns:
        ``{"all": metrics, "last": metrics, "drift": ...}``, the first two in
        :func:`~hemeplm.evaluate.print_table`'s layout: ``model`` holds the trajectory's validity,
        ``info.reference`` the held-out MD's own.
    """
    held = load_system(topology, [reference])
    geom = build_geometry(held.topology, held.ligand, held.segments[0][0], topology)
    ref = fit_reference(geom, held.segments, held.timestep_ps, 1, held.timestep_ps, reference)
    info = {"reference": validity(ref.frames, ref)}
    forecast = load_system(topology, [trajectory]).segments[0]
    frames = forecast[1:]
    md_span = (len(md) - 1) * md_ps
    drifted = {"md_span_ps": md_span, "md": drift([md], geom, md_ps, md_span),
               "forecast_at_md_span": drift([forecast], geom, frame_ps, md_span),
               "forecast_at_end": drift([forecast], geom, frame_ps, (len(forecast) - 1) * frame_ps),
               "windows": window_swelling(forecast, geom.ca, *windows)}
    return {"all": {"model": validity(frames, ref), "info": info},
            "last": {"model": validity(frames[-LONG_TAIL:], ref), "info": info}, "drift": drifted}


def _drift_text(d: dict) -> str:
    kept = d["pocket_kept_end_fraction"]
    return (f"{d['ca_rmsd_end_A']:.2f} Å, Cα Rg {d['ca_rg_change_end_A']:+.2f} Å"
            + ("" if np.isnan(kept) else f", {kept:.0%} kept"))


def _windows_text(w: dict) -> str:
    if not w["junctions"]:
        return "no window after the first lies wholly in the forecast: no junction to measure"
    return (f"Cα radius of gyration added at each of its {w['junctions']} junctions (a window's first generated "
            f"frame against the last frame it was given): {w['junction_rg_step_A']:+.3f} Å; inside each window from "
            f"there: {w['window_rg_step_A']:+.3f} Å")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--long-frames", type=int, default=1000,
                   help="frames of the long forecast checked for validity, the given start included (0: none)")
    p.add_argument("--results", default=None, metavar="FILE.md",
                   help="also write the tables, with the commit and machine, between the <!-- demo:begin --> and "
                        "<!-- demo:end --> lines of FILE.md (make demo: docs/results.md)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    gen = Sampler.from_checkpoint(run / "ckpt.pt", steps=args.steps, progress=True)
    prior = gen.prior()
    generators = {"raw": dataclasses.replace(gen, project_steps=0),
                  "raw_prior": dataclasses.replace(prior, project_steps=0), "model": gen, "prior": prior}
    ev = run / "eval"
    segs, train_dt = load_frames(gen, gen.cfg.data.topology, [gen.cfg.data.trajectories[0]])
    md, dt, source = held_out_frames(gen, segs[0], train_dt)
    print(f"held-out MD: {source}, {len(md)} frames {dt:g} ps apart")
    topology, ref, ref_model_dt, n_frames = held_out(gen, ev, md, dt)

    def generate(name: str, **kwargs) -> dict[str, dict]:
        """run_task for the model (``ev/NAME.xtc``), the prior (``ev/NAME_prior.xtc``) and both unprojected
        (``ev/NAME_raw.xtc``, ``ev/NAME_raw_prior.xtc``), all with the same seed."""
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
                                        task=kwargs["task"], prior=out["prior"]["trajectories"],
                                        raw=out["raw"]["trajectories"], raw_prior=out["raw_prior"]["trajectories"],
                                        force=True, ligand_file=gen.cfg.data.ligand_file)
        tables[name] = print_table(metrics)
        headings[name] = (f"{name}: the network's raw output (raw) beside the raw prior, then both projected (model, "
                          f"prior), vs baselines on the held-out {what}")
        print(f"\n== {headings[name]} ==")
        print(tables[name])
    if args.long_frames > 1:
        t0 = time.time()
        out = run_task(gen, "forecast", topology, ref, ev / "long_forecast.xtc", start=0, num_frames=args.long_frames,
                       seed=0, force=True)
        found = long_validity(topology, ref, out["trajectories"][0], gen.frame_ps, segs[0].cpu().numpy(), train_dt,
                              (gen.forecast_starts(args.long_frames), gen.history, gen.window))
        span = (args.long_frames - 1) * gen.frame_ps
        d = found["drift"]
        tables["long_forecast"] = "\n".join([
            f"all {args.long_frames - 1} generated frames:", print_table(found["all"]),
            f"last {min(LONG_TAIL, args.long_frames - 1)} frames:", print_table(found["last"]),
            f"Cα RMSD from the start (Å, last {END_FRACTION:.0%} of the span), change of the Cα radius of gyration "
            "and pocket residues kept: "
            f"at {d['md_span_ps']:.0f} ps {_drift_text(d['forecast_at_md_span'])} (the first training trajectory "
            f"from its first frame: {_drift_text(d['md'])}); at {span:.0f} ps {_drift_text(d['forecast_at_end'])}",
            _windows_text(d["windows"])])
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
    ckpt = load_checkpoint(run / "ckpt.pt")
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
