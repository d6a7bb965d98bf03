"""Choose a run's sampling temperature (``diffusion.noise_scale``) on its validation windows.

    python tools/temperature.py runs/demo [--scales 1 0.9 0.8 0.7 0.6] [--windows 12] [--seed 0]

Each validation window (evenly spaced over the validation split, never the held-out replicas) is forecast from
its first ``tasks.history`` MD frames by the raw network (no projection) at each noise scale τ. Two motions of the
generated atoms are set beside the MD's own over the same frames: the step (mean distance an atom moves from one
frame to the next, at the model's lag) and the displacement (mean distance from the window's first frame). A
ratio above 1 means the sampler moves atoms farther than the MD does. The table is printed, and the τ whose two
ratios are together nearest 1 (least |log step ratio| + |log displacement ratio|) is suggested; set it with
``diffusion.noise_scale=τ`` when training, or ``sample.py --noise-scale τ``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from hemeplm.data.dataset import WindowDataset, featurize
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler
from hemeplm.tasks import task_mask


def motion(coords: torch.Tensor, given: int) -> tuple[float, float]:
    """Of the frames ``given..T-1`` of (B, T, A, 3) windows: the mean distance (Å) every atom moves from the frame
    before (the step) and from frame 0 (the displacement)."""
    return (float((coords[:, given:] - coords[:, given - 1:-1]).norm(dim=-1).mean()),
            float((coords[:, given:] - coords[:, :1]).norm(dim=-1).mean()))


def measure(gen: Sampler, scales: list[float], windows: int, seed: int
            ) -> tuple[tuple[float, float], dict[float, tuple[float, float]]]:
    """The MD's :func:`motion` and the raw network's at each noise scale, on ``windows`` validation windows."""
    cfg = gen.cfg
    ds = WindowDataset(featurize(cfg.data), cfg.data, "val")
    if len(ds) == 0:
        raise HemeplmError("has no validation windows (data.split gives the validation split no full window)",
                           cfg.data.topology)
    pick = np.unique(np.linspace(0, len(ds) - 1, min(windows, len(ds))).round().astype(int))
    coords = torch.stack([ds[int(i)]["coords"] for i in pick]).float()
    h = gen.history
    mask = task_mask("forecast", coords.shape[1], gen.model.token_is_ligand, history=h)
    raw = dataclasses.replace(gen, project_steps=0)
    out = {tau: motion(dataclasses.replace(raw, noise_scale=tau).window_sample(
        coords, mask, torch.Generator().manual_seed(seed)), h) for tau in scales}
    return motion(coords, h), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6])
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if any(not np.isfinite(s) or s <= 0 for s in args.scales):
        raise SystemExit(f"--scales must be numbers above 0, got {args.scales}")
    if args.windows < 1:
        raise SystemExit(f"--windows must be at least 1, got {args.windows}")
    gen = Sampler.from_checkpoint(Path(args.run_dir) / "ckpt.pt", device="cpu", project_steps=0)
    md, found = measure(gen, args.scales, args.windows, args.seed)
    print(f"generated atoms' mean step from the frame before and displacement from the window's first frame (Å); "
          f"MD: {md[0]:.3f} and {md[1]:.3f}")
    print("noise scale   step  ratio  displacement  ratio")
    for tau, (step, disp) in found.items():
        print(f"{tau:11.2f}  {step:5.3f}  {step / md[0]:5.2f}  {disp:12.3f}  {disp / md[1]:5.2f}")
    best = min(found, key=lambda tau: sum(abs(np.log(v / ref)) for v, ref in zip(found[tau], md)))
    print(f"nearest the MD: noise scale {best:g} (the checkpoint's: {gen.temperature:g})")


if __name__ == "__main__":
    main()
