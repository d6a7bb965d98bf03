"""Tasks are conditioning masks over (frame, token); one set of weights serves all.

A mask is (T, N) bool, True where a token's values in a frame are given:

* ``forecast``: frame 0 given, or the first ``history`` frames (the past frames a forecast
  continues from: their differences are velocities);
* ``tps``: first and last frames given (transition path between them);
* ``inpaint``: protein tokens given in every frame; the ligand tokens (or a
  chosen subset) generated in every frame;
* ``upsample``: every ``factor``-th frame given.

Frame 0's protein is given in every task: it is the key frame that defines
the local frames the values live in.
"""

from __future__ import annotations

import random

import torch

from hemeplm.errors import HemeplmError

TASKS = ("forecast", "tps", "inpaint", "upsample")


def task_mask(task: str, n_frames: int, is_ligand: torch.Tensor, upsample_factor: int = 4,
              inpaint_tokens: torch.Tensor | None = None, ligand_key_given: bool = False,
              history: int = 1) -> torch.Tensor:
    """Conditioning mask of one task.

    Args:
        task: one of :data:`TASKS`.
        n_frames: T.
        is_ligand: (N,) bool, ligand tokens.
        upsample_factor: given-frame spacing for ``upsample``.
        inpaint_tokens: (N,) bool, the tokens to inpaint (default: every ligand token).
        ligand_key_given: for ``inpaint``, also give the inpainted tokens in frame 0
            (used to continue an inpainted trajectory window by window).
        history: for ``forecast``, the number of leading frames given (1: the key frame alone).
    Returns:
        (T, N) bool, True = given.
    """
    n = is_ligand.shape[0]
    mask = torch.zeros(n_frames, n, dtype=torch.bool, device=is_ligand.device)
    if task == "forecast":
        mask[:history] = True
    elif task == "tps":
        mask[0] = True
        mask[-1] = True
    elif task == "upsample":
        mask[::upsample_factor] = True
    elif task == "inpaint":
        hidden = is_ligand if inpaint_tokens is None else inpaint_tokens
        if not hidden.any():
            raise HemeplmError("inpaint needs ligand tokens; this system has none")
        mask[:] = ~hidden
        if ligand_key_given:
            mask[0] = True
    else:
        raise HemeplmError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return mask


def active_tasks(weights: dict[str, float], is_ligand: torch.Tensor) -> list[str]:
    """The tasks with a positive weight that this system can train (inpaint needs ligand tokens)."""
    names = [k for k in TASKS if weights.get(k, 0) > 0 and (k != "inpaint" or bool(is_ligand.any()))]
    if not names:
        raise HemeplmError("no task in tasks.* has a positive weight (inpaint needs a ligand)")
    return names


def draw_training_mask(rng: random.Random, weights: dict[str, float], n_frames: int, is_ligand: torch.Tensor,
                       upsample_factor: int, history: int = 1) -> tuple[str, torch.Tensor]:
    """Draw a task by weight and a mask for it (inpainting a random ligand subset half of the time; a
    forecast from 1 to ``history`` given frames, uniformly, so a model serves a forecast's first window,
    which has one known frame, and the windows after it, which have ``history``).

    ``rng`` should be seeded identically on every rank so that ranks train the same task.
    """
    names = active_tasks(weights, is_ligand)
    task = rng.choices(names, weights=[weights[k] for k in names])[0]
    subset, key_given = None, False
    if task == "inpaint":
        lig = torch.nonzero(is_ligand).flatten().tolist()
        if rng.random() < 0.5 and len(lig) > 1:
            chosen = rng.sample(lig, rng.randint(1, len(lig)))
            subset = torch.zeros_like(is_ligand)
            subset[chosen] = True
        key_given = rng.random() < 0.25
    given = rng.randint(1, history) if task == "forecast" and history > 1 else 1
    return task, task_mask(task, n_frames, is_ligand, upsample_factor, subset, key_given, given)
