"""The baselines every metric is also computed for, on the same frames as the model:

- ``static``: frame 0 of each generated trajectory repeated for its length;
- ``random_walk``: from frame 0 of each generated trajectory, isotropic
  Gaussian steps per atom whose variance is the reference's per-atom step
  variance at the generated frame spacing (seeded), then superposed on Cα;
- ``prior`` (only with ``--prior``; ``raw_prior`` with ``--raw-prior``): trajectories sampled elsewhere from the
  same checkpoint with the network's output zeroed, read like the generated
  ones (same topology and frame spacing): what the sampler and the
  conditioning give without the network, so what the model gains over it is
  the network's.

When only some atoms were generated (``--task inpaint``: ``atoms``), both baselines keep the given atoms of
the generated trajectory in every frame and replace only the generated ones (held at frame 0, or walked).
The frames a task gave are left out of their metrics as out of the model's.

A model that does not beat them has learnt nothing.

:func:`baselines` makes the first two; the command reads the ``prior`` files.
"""

from __future__ import annotations

import numpy as np

from hemeplm.evaluate.geometry import superpose
from hemeplm.evaluate.trajectory import Reference


def baselines(segments: list[np.ndarray], ref: Reference, seed: int, atoms: np.ndarray | None = None
              ) -> dict[str, list[np.ndarray]]:
    """The ``static`` and ``random_walk`` baselines for generated trajectories.

    Args:
        segments: per generated trajectory, (F_s, A, 3) Å.
        atoms: optional (A,) bool, the generated atoms; the others are kept as the trajectory has them.
    Returns:
        name -> per trajectory (F_s, A, 3) Å, in the common Cα frame.
    """
    rng = np.random.default_rng(seed)
    target = ref.frames[0, ref.geom.ca]
    walks, statics = [], []
    for s in segments:
        steps = rng.normal(size=(len(s) - 1, s.shape[1], 3)) * ref.step_sigma[None, :, None]
        walk = s[0].astype(np.float64) + np.concatenate([np.zeros((1, s.shape[1], 3)), np.cumsum(steps, 0)])
        static = np.repeat(s[:1], len(s), axis=0)
        if atoms is not None:
            walk = np.where(atoms[None, :, None], walk, s)
            static = np.where(atoms[None, :, None], static, s)
        walks.append(superpose(walk, ref.geom.ca, target))
        statics.append(static)
    return {"static": statics, "random_walk": walks}
