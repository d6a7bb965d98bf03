"""The speed-fidelity curve of the sampler: forecast the held-out MD at several settings and score each.

    python tools/sampler_curve.py runs/demo [--settings 5:0 10:0 20:0 10:4 50:4] [--samples 4] [--lags-ps 2 8]
        [--sampler ddim|dpm2m]

Each setting ``STEPS:RESTARTS`` is DDIM steps and Restart sampling's restarts (0: off; the checkpoint's restart
level and restart steps otherwise). For each, the forecast of ``tools/demo.py`` (from the held-out MD's first
frame, as many frames as it covers at the model's lag, ``--samples`` samples as one batch, seed 0) is sampled
four times, as the demo's table samples it: the model and its prior, each raw and projected. The held-out
fidelity of each (torsion JSD, RMSF r, validity; frame 0 left out) is put beside the wall time of the model's
projected forecast and the simulated time it gives per wall hour (all samples of the batch counted). The table
is printed and saved, with a plot of torsion JSD against wall time, in ``RUN/eval/sampler_curve/``.

A model trained at several lags (``data.lags``) is measured at each lag of ``--lags-ps`` (default: ``data.lag``'s):
the forecast then covers the held-out span in fewer, longer steps, and is scored against the same MD.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hemeplm.diffusion import SAMPLERS
from hemeplm.generate.heldout import held_out, held_out_frames
from hemeplm.evaluate.report import json_ready
from hemeplm.evaluate.run import evaluate_trajectories
from hemeplm.generate.sampler import Sampler, load_frames, run_task
from hemeplm.plots import _save, plt

#: (metrics.json key, column heading) of each generator's columns
COLUMNS = (("torsion_jsd", "torsion JSD"), ("rmsf_pearson", "RMSF r"), ("bond_ok_fraction_peptide", "peptide ok"),
           ("clashes_per_frame", "clashes/frame"), ("physical_filter_pass_fraction", "filter"))
WHO = ("raw", "raw_prior", "model", "prior")


def setting(text: str) -> tuple[int, int]:
    """``"10:4"`` -> (10, 4)."""
    try:
        steps, restarts = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not STEPS:RESTARTS, e.g. 10:0") from None
    if steps < 1 or restarts < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: steps must be at least 1 and restarts at least 0")
    return steps, restarts


def measure(gen: Sampler, steps: int, restarts: int, topology: Path, reference: Path, n_frames: int, samples: int,
            out: Path) -> dict:
    """Sample and score one setting: ``{"lag_ps", "frames", "sampler", "steps", "restarts", "denoiser_calls",
    "wall_seconds", "ns_per_hour", "metrics"}`` (the metrics of :func:`~hemeplm.evaluate.run.evaluate_trajectories`)."""
    base = dataclasses.replace(gen, steps=steps, restart=None if restarts else 0.0)
    if restarts:
        base.cfg = dataclasses.replace(base.cfg, diffusion=dataclasses.replace(base.cfg.diffusion, restarts=restarts))
    prior = base.prior()
    generators = {"raw": dataclasses.replace(base, project_steps=0),
                  "raw_prior": dataclasses.replace(prior, project_steps=0), "model": base, "prior": prior}
    made = {who: run_task(g, "forecast", topology, reference, out / f"{who}.xtc", start=0, num_frames=n_frames,
                          num_samples=samples, seed=0, force=True)
            for who, g in generators.items()}
    metrics = evaluate_trajectories(topology, [reference], made["model"]["trajectories"], out, task="forecast",
                                    prior=made["prior"]["trajectories"], raw=made["raw"]["trajectories"],
                                    raw_prior=made["raw_prior"]["trajectories"], force=True,
                                    ligand_file=gen.cfg.data.ligand_file)
    wall = made["model"]["wall_seconds"]
    simulated_ns = samples * (n_frames - 1) * gen.frame_ps * 1e-3
    return {"lag_ps": gen.frame_ps, "frames": n_frames, "sampler": gen.sampler, "steps": steps, "restarts": restarts,
            "denoiser_calls": base.denoiser_steps, "wall_seconds": wall,
            "projection_steps_taken": made["model"]["projection"]["steps_taken"],
            "ns_per_hour": simulated_ns / wall * 3600, "metrics": metrics}


def table(rows: list[dict]) -> str:
    """Markdown table: one line per setting, the four generators' columns side by side."""
    head = ["lag ps", "sampler steps:restarts", "calls", "wall s", "ns/h",
            *(f"{who} {name}" for key, name in COLUMNS for who in WHO)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['lag_ps']:g}", f"{r['sampler']} {r['steps']}:{r['restarts']}", str(r["denoiser_calls"]),
                 f"{r['wall_seconds']:.0f}",
                 f"{r['ns_per_hour']:.1f}"]
        for key, _ in COLUMNS:
            cells += [f"{r['metrics'][who][key]:.3g}" for who in WHO]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Torsion JSD (raw and projected, model and prior) against the projected model's wall time."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    wall = [r["wall_seconds"] for r in rows]
    for who, style in zip(WHO, ("o", "x", "s", "+")):
        ax.plot(wall, [r["metrics"][who]["torsion_jsd"] for r in rows], style, label=who)
    for r in rows:
        ax.annotate(f"{r['lag_ps']:g} ps {r['steps']}:{r['restarts']}",
                    (r["wall_seconds"], r["metrics"]["model"]["torsion_jsd"]), textcoords="offset points",
                    xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds, projected forecast (all samples)")
    ax.set_ylabel("torsion JSD to the held-out MD (lower is better)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--settings", type=setting, nargs="+", default=[(5, 0), (10, 0), (20, 0), (10, 4), (50, 4)],
                   metavar="STEPS:RESTARTS")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the checkpoint's")
    p.add_argument("--lags-ps", type=float, nargs="+", default=None, metavar="PS",
                   help="lags to measure, each one the model was trained at (default: data.lag's)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    out = run / "eval" / "sampler_curve"
    rows = []
    loaded = Sampler.from_checkpoint(run / "ckpt.pt", sampler=args.sampler)
    segs, train_dt = load_frames(loaded, loaded.cfg.data.topology, [loaded.cfg.data.trajectories[0]])
    for lag_ps in args.lags_ps or [None]:
        gen = dataclasses.replace(loaded, lag_ps=lag_ps)
        md, dt, source = held_out_frames(gen, segs[0], train_dt)
        topology, reference, _, n_held = held_out(gen, out, md, dt)
        n_frames = (n_held - 1) // gen.lag + 1
        print(f"held-out MD: {source}; forecasts of {n_frames} frames {gen.frame_ps:g} ps apart, {args.samples} "
              "samples")
        for steps, restarts in args.settings:
            rows.append(measure(gen, steps, restarts, topology, reference, n_frames, args.samples,
                                out / f"lag{gen.frame_ps:g}_{gen.sampler}{steps}_r{restarts}"))
            print(table(rows[-1:]), flush=True)
            (out / "curve.json").write_text(json.dumps(json_ready(rows), indent=2))
    text = table(rows)
    (out / "curve.md").write_text(text + "\n")
    plot(rows, out / "curve.png")
    print(text)
    return rows


if __name__ == "__main__":
    main()
