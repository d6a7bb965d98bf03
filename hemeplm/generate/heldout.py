"""The held-out MD a checkpoint is tested on, written as the evaluation reads it.

``tools/demo.py``, ``tools/sampler_curve.py`` and ``hemeplm bench --vs-md --ckpt`` score generated frames
against it: the whole first replica of the checkpoint's ``data.held_out`` when its config names one, else the
last ``data.split[2]`` of its first training trajectory; either is never seen in training or validation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hemeplm.data.dataset import split_bounds
from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Sampler, load_frames


def held_out_frames(gen: Sampler, first: torch.Tensor, first_dt: float) -> tuple[torch.Tensor, float, str]:
    """The held-out MD (F, A, 3) Å (kept atoms, superposed like training), its frame spacing in ps and where it
    comes from: the whole first replica of ``data.held_out``, else the test split of ``first`` (F, A, 3), the
    first training trajectory (frames ``first_dt`` ps apart)."""
    data = gen.cfg.data
    if data.held_out:
        path = data.held_out[0]
        segs, dt = load_frames(gen, data.topology, [path])
        if not math.isclose(dt * gen.lag, gen.frame_ps, rel_tol=1e-3):
            raise HemeplmError(f"frames are {dt:g} ps apart; the model was trained on frames "
                               f"{gen.frame_ps / gen.lag:g} ps apart (lag {gen.lag}): a held-out replica must be "
                               f"saved at the training spacing", path)
        md, source = segs[0], f"the whole held-out replica {path}"
    else:
        path, dt = data.trajectories[0], first_dt
        lo, hi = split_bounds(len(first), data.split)[2]
        md, source = first[lo:hi], f"the last {hi - lo} frames of {path}"
    if len(md) < 2:
        raise HemeplmError(f"{source} holds {len(md)} frame(s) (data.split {data.split}, data.held_out "
                           f"{data.held_out}): nothing to test on", path)
    return md, dt, source


def held_out(gen: Sampler, ev: Path, md: torch.Tensor, dt: float) -> tuple[Path, Path, Path, int]:
    """Write the system's topology and the held-out frames ``md`` (F, A, 3) Å, ``dt`` ps apart.

    Returns:
        topology PDB; the held-out XTC (kept atoms, Å superposed like training; times from ``dt`` on, as
        times 0, 1, 2, ... read as frame indices); the same frames every
        :attr:`~hemeplm.generate.sampler.Sampler.lag`-th, at the sampler's frame spacing (what inpainting is given,
        so that inpainted frame i pairs with reference frame i); held-out frame count.
    """
    import mdtraj

    ev.mkdir(parents=True, exist_ok=True)
    topology = ev / "system.pdb"
    topology.write_text(gen.model.static_info["topology_pdb"])
    paths = []
    for name, stride in (("heldout", 1), ("heldout_model_dt", gen.lag)):
        xyz = md[::stride].cpu().numpy() / 10.0
        paths.append(ev / f"{name}.xtc")
        mdtraj.Trajectory(xyz, gen.model.topology(), time=(np.arange(len(xyz)) * stride + 1) * dt).save(
            str(paths[-1]), force_overwrite=True)
    return topology, *paths, len(md)
