"""Per-frame confidence of generated frames: the denoiser's self-consistency.

A window of T frames keyed on its first frame is encoded into the model's
internal values; every frame after the key is re-noised to a moderate
diffusion step t* (:data:`RENOISE_FRACTION` of the schedule, ᾱ ≈ 0.5 for the
cosine schedule) with :data:`DRAWS` independent noise draws, and the network's
one-step estimate of the clean values is decoded back to coordinates. A frame
the model would itself generate comes back nearly where it was; a frame it finds
implausible is pulled away. The frame's *self-consistency* d (Å) is the
root-mean-square displacement between the decoded estimate and the decoded
frame, over the draws and over the ligand atoms (every atom of a protein-only
system).

A trajectory is scored in windows of the model's T frames overlapping by one
frame, as sampling places them (:func:`frame_uncertainty`). In a forecast every
window starts from the previous window's last frame, so a frame's error adds to
the error of the key it was generated from: the score of frame f in a window
keyed on frame k is u(f) = √(u(k)² + d(f)²), with u(0) = 0. For the other tasks
u(f) = d(f). The score is an *uncertainty* in Å: higher means less confident.

The settings were chosen on the demo's validation split (a 4-sample forecast
from its first frame, Spearman ρ with the per-frame ligand RMSD to the MD frame
at the same time): ligand atoms 0.36 against 0.21 with the pocket atoms added;
t* at 0.3/0.5/0.7/0.9 of the schedule 0.31/0.36/0.26/0.19; without the
accumulation 0.27; the spread of the ligand across the 4 samples 0.19.

It needs one sample only, and costs one encoder pass per window and
:data:`DRAWS` denoiser passes per window, against the sampler's
:attr:`~hemeplm.generate.sampler.Sampler.denoiser_steps` (70 by default: 50 DDIM steps and 4 restarts of 5)
denoiser passes and the projection.
"""

from __future__ import annotations

import torch

from hemeplm.tasks import task_mask
from hemeplm.generate.fragment import denoiser_for

#: re-noising step as a fraction of the diffusion schedule
RENOISE_FRACTION = 0.5
#: independent noise draws per window
DRAWS = 8
#: windows denoised in one batch
WINDOW_BATCH = 16


def scored_atoms(model) -> torch.Tensor:
    """(A,) bool: the ligand atoms; every atom when there is no ligand."""
    atoms = model.token_is_ligand[model.tokens.atom_token]
    return atoms if bool(atoms.any()) else torch.ones_like(atoms)


@torch.no_grad()
def self_consistency(gen, windows: torch.Tensor, generator: torch.Generator,
                     draws: int = DRAWS, fraction: float = RENOISE_FRACTION) -> torch.Tensor:
    """Self-consistency of every frame of windows keyed on their first frame (module docstring).

    Args:
        gen: the :class:`~hemeplm.generate.sampler.Sampler` (model, diffusion, window).
        windows: (B, T, A, 3) Å, T = the model's window.
        generator: the noise draws' random stream.
    Returns:
        (B, T) RMS displacement in Å over :func:`scored_atoms`; 0 for frame 0 (the key, given).
    """

    m, diffusion = gen.model, gen.diffusion
    b, t = windows.shape[:2]
    key = windows[:, 0]
    mask = task_mask("forecast", t, m.token_is_ligand).expand(b, -1, -1)
    given = mask[..., None]
    cond, _ = m.condition(key)
    denoise = denoiser_for(m, cond, key)
    x0 = m.values(windows, key)
    clean = m.coordinates(x0, key)
    atoms = scored_atoms(m)
    step = torch.full((b,), round(fraction * (diffusion.timesteps - 1)), dtype=torch.long, device=windows.device)
    limit = float(m.value_limit)
    squared = windows.new_zeros(b, t)
    for _ in range(draws):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = torch.where(given, x0, diffusion.q_sample(x0, step, noise))
        estimate = diffusion.predict_x0(x_t, step, diffusion.eps(denoise, x_t, step, cond, mask))
        estimate = torch.where(given, x0, estimate.clamp(-limit, limit))
        moved = m.coordinates(estimate, key) - clean
        squared += moved[:, :, atoms].pow(2).sum(-1).mean(-1)
    return (squared / draws).sqrt()


def frame_uncertainty(gen, frames: torch.Tensor, accumulate: bool, seed: int = 0) -> torch.Tensor:
    """Per-frame uncertainty of trajectories (module docstring).

    Args:
        gen: the :class:`~hemeplm.generate.sampler.Sampler` (model, diffusion, window).
        frames: (S, F, A, 3) Å, frame 0 given.
        accumulate: add each window's key-frame uncertainty in quadrature (a forecast's chained windows).
        seed: seeds the noise draws.
    Returns:
        (S, F) Å, 0 for frame 0.
    """
    s, f = frames.shape[:2]
    t = gen.window
    starts = gen.forecast_starts(f) if accumulate else gen.window_starts(f)  # where a forecast placed its windows
    pad = starts[-1] + t - f
    padded = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1)], 1) if pad > 0 else frames
    windows = torch.stack([padded[:, k:k + t] for k in starts], 1).flatten(0, 1)   # (S*W, T, A, 3)
    generator = torch.Generator(device=frames.device).manual_seed(seed)
    d = torch.cat([self_consistency(gen, chunk, generator) for chunk in windows.split(WINDOW_BATCH)])
    d = d.view(s, len(starts), t)
    u = frames.new_zeros(s, f)
    for w, k in enumerate(starts):
        n = min(t, f - k)
        base = u[:, k:k + 1] if accumulate else 0.0
        u[:, k + 1:k + n] = (base ** 2 + d[:, w, 1:n] ** 2).sqrt()
    return u
