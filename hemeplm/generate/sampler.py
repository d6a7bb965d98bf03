"""Generate trajectories from a checkpoint: forecast, transition paths, inpainting, upsampling.

Every task fills a *timeline* of frames in which some (frame, token) entries
are known. Windows of the model's ``T`` frames are placed on the timeline; each
is generated conditioned on what is known inside it (frame 0's protein is
always known and is the window's key frame); in a forecast and in inpainting
its frames then become known to the next window:

* forecast: each window starts at the last `tasks.history` generated frames (T - history new frames each);
* upsample: the coarse frames sit every ``upsample_factor`` (k) frames; windows
  start at coarse frames and know only the coarse frames inside them, exactly
  the mask training draws; they are independent (one batch), and each output
  frame comes from the one window whose coarse frames bracket it;
* inpaint: the protein is known everywhere; windows overlap by one frame so
  each continues the ligand of the previous one; a ligand token is generated
  whole (``--inpaint-atoms`` widens to every token holding a chosen atom);
* tps: a path of T frames between the two end frames, then, coarse to fine,
  each gap between consecutive frames is filled by another T-frame path (all
  gaps of a level in one batch), until the path has at least ``num_frames``
  frames; it is then resampled to ``num_frames`` evenly spaced frames.

All samples of a call run as one batch through the denoiser.

Every generated window is then projected (:func:`hemeplm.geometry.structure.project`,
``structure.project_steps``; 0 keeps the network's raw output): inter-token bonds, clashes and the
peptide bonds (ω planar, the two backbone angles across the bond). With a fold hold
(``sample.py --fold-hold SIGMAS``, ``structure.fold_sigmas``; off by default) the projection also
keeps the Cα-Cα distances of each window's key frame (its conditioning frame, for a forecast the
last frame of the previous window) within SIGMAS training-MD standard deviations. What the
projection moved is recorded per window (:attr:`Sampler.projection_log`, the summary's ``projection``).

The model knows one frame spacing, ``data.lag`` times the training data's
(:attr:`Sampler.frame_ps`): inpainting and upsampling take the given file's
frames at that spacing (k times it for upsampling) and refuse a file whose
spacing does not divide it; every output is at that spacing, except a
transition path, which is at the real time between its end frames.

:func:`generate` is the one task dispatch: ``sample.py`` (:func:`run_task`, frames
read from files by :func:`given_from_files`) and the Python API
(:mod:`hemeplm.generate.api`, ``mdtraj.Trajectory`` objects read in memory by
:func:`given_from_trajectories`) both call it, with the same checks of every value
before any work and the same times: generated frame k is at the start frame's
time plus k times the generated spacing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hemeplm.train.checkpoint import build_model, load_checkpoint
from hemeplm.generate.confidence import frame_uncertainty
from hemeplm.config import PRECISIONS, Config
from hemeplm.data.load import load_system, select_ligand
from hemeplm.data.numbering import kept_insertion_codes, topology_pdb, write_pdb
from hemeplm.device import resolve_device
from hemeplm.diffusion import SAMPLERS, GaussianDiffusion
from hemeplm.errors import HemeplmError
from hemeplm.models.surrogate import HemePLM
from hemeplm.geometry.structure import project
from hemeplm.tasks import TASKS, task_mask
from hemeplm.io import atomic_save, atomic_write_text, check_outputs, output_paths
from hemeplm.generate.fragment import denoiser_for
from hemeplm.generate.energies import predict
from hemeplm.geometry.rigid import superposition

log = logging.getLogger(__name__)

#: Å; the summary's ``projection.moved_fraction`` counts generated atoms the projection moved farther than this
PROJECTION_MOVED_A = 0.5


def sampler_settings(cfg: Config, sampler: str | None = None, steps: int | None = None, path=None
                     ) -> tuple[str, int]:
    """The sampler and DDIM steps to use: those given, else the config's ``diffusion.sampler`` and
    ``diffusion.sample_steps``; an unknown sampler or fewer than 1 step is a :class:`HemeplmError` naming ``path``."""
    sampler = cfg.diffusion.sampler if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise HemeplmError(f"unknown sampler {sampler!r} (diffusion.sampler); use one of {', '.join(SAMPLERS)}", path)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise HemeplmError(f"steps must be an integer of at least 1, got {steps!r}", path)
    return sampler, cfg.diffusion.sample_steps if steps is None else steps


@dataclass
class Sampler:
    """A model, its diffusion and sampler settings.

    Args:
        model: HemePLM in eval mode; diffusion: its GaussianDiffusion; cfg: its Config.
        steps: DDIM steps (ignored by ``ancestral``); sampler: one of :data:`~hemeplm.diffusion.SAMPLERS`.
        project_steps: steps of the structure projection of every generated window
            (:func:`hemeplm.geometry.structure.project`); None: the config's ``structure.project_steps``.
        fold_sigmas: the fold hold's tolerance (training-MD standard deviations of each Cα-Cα distance
            about its value in the window's key frame; 0: off); None: the config's ``structure.fold_sigmas``.
        noise_scale: the sampler's temperature (:meth:`~hemeplm.diffusion.GaussianDiffusion.sample`); None: the
            config's ``diffusion.noise_scale``.
        restart: the level Restart sampling re-noises each window to, a fraction of the diffusion steps (the
            same method; 0: off); None: the config's ``diffusion.restart``.
        lag_ps: the time between generated frames: one of the lags the model was trained at (``data.lag`` and
            ``data.lags``, times the training MD's frame spacing); None: ``data.lag``'s.
        precision: "float32" or "bfloat16" (the networks under bfloat16 autocast); None: the config's ``precision``.
        compile: compile the model's denoiser with ``torch.compile`` (in place; the first windows pay for it).
    Attributes:
        projection_log: one entry per :meth:`window_sample` call: per window of the batch, the mean and
            max displacement (Å) of the generated atoms by the projection and the fraction moved farther
            than :data:`PROJECTION_MOVED_A` (:func:`projection_summary` condenses it).
    """

    model: HemePLM
    diffusion: GaussianDiffusion
    cfg: Config
    steps: int = 50
    sampler: str = "ddim"
    progress: bool = False
    project_steps: int | None = None
    fold_sigmas: float | None = None
    noise_scale: float | None = None
    restart: float | None = None
    lag_ps: float | None = None
    precision: str | None = None
    compile: bool = False
    projection_log: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.model.check_schedule(self.diffusion)
        settings = ((self.fold_sigmas, lambda v: v >= 0, "the fold hold must be a number of at least 0 (0: off)"),
                    (self.noise_scale, lambda v: v > 0, "the noise scale must be a number above 0"),
                    (self.restart, lambda v: 0 <= v <= 1, "the restart level must be a number from 0 (off) to 1"))
        for value, ok, refusal in settings:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not ok(value)):
                raise HemeplmError(f"{refusal}, got {value!r}")
        if self.lag_ps is not None:
            self.trained_lag(self.lag_ps)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise HemeplmError(f"the precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile and getattr(self.model.denoiser, "_compiled_call_impl", None) is None:
            self.model.denoiser.compile()  # once per model: a copy of this Sampler (dataclasses.replace) shares it

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", steps: int | None = None,
                        sampler: str | None = None, **kw) -> "Sampler":
        """Load ``path`` onto ``device`` (:func:`~hemeplm.device.resolve_device`: ``"auto"`` is the GPU when
        there is one); ``sampler`` and ``steps`` as :func:`sampler_settings` (None: the checkpoint's)."""
        for name, value, low in (("steps", steps, 1), ("project_steps", kw.get("project_steps"), 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise HemeplmError(f"{name} must be an integer of at least {low}, got {value!r}")
        device = resolve_device(device)
        ckpt = load_checkpoint(path, map_location=device)
        model, cfg = build_model(ckpt)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        sampler, steps = sampler_settings(cfg, sampler, steps, path)
        return cls(model.to(device), diffusion.to(device), cfg, steps=steps, sampler=sampler, **kw)

    def prior(self) -> "Sampler":
        """The same generator with nothing learnt: a copy of the model whose denoiser's output layer
        (and its refiner's) is zero, so that every sample is what the sampler and conditioning give by
        themselves (a baseline)."""
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for layer in [model.denoiser.out] + ([model.refiner.out] if model.refiner is not None else []):
                layer.weight.zero_()
                layer.bias.zero_()
        return dataclasses.replace(self, model=model)

    @property
    def window(self) -> int:
        return self.cfg.data.window

    @property
    def projection_steps(self) -> int:
        """Steps of the structure projection of each generated window."""
        return self.cfg.structure.project_steps if self.project_steps is None else self.project_steps

    @property
    def fold_hold(self) -> float:
        """The fold hold's tolerance in standard deviations (0: off)."""
        return self.cfg.structure.fold_sigmas if self.fold_sigmas is None else self.fold_sigmas

    @property
    def temperature(self) -> float:
        """The sampler's noise scale (:attr:`noise_scale`, else the config's ``diffusion.noise_scale``)."""
        return self.cfg.diffusion.noise_scale if self.noise_scale is None else self.noise_scale

    @property
    def restart_settings(self) -> dict:
        """Restart sampling's settings (:attr:`restart`, else the config's; ``restart_steps``, ``restarts``)."""
        return {**self.cfg.diffusion.restart_settings, **({} if self.restart is None else {"restart": self.restart})}

    @property
    def lags_ps(self) -> list[float]:
        """The lags the model was trained at (ps): ``data.lag`` and ``data.lags`` times the training MD's frame
        spacing."""
        return [lag * self.model.static_info["timestep_ps"] for lag in self.model.lags]

    def trained_lag(self, lag_ps: float) -> int:
        """The training lag (frames of the training MD) of ``lag_ps``; a lag the model was not trained at is a
        :class:`HemeplmError` listing those it was."""
        for lag, ps in zip(self.model.lags, self.lags_ps):
            if math.isclose(ps, lag_ps, rel_tol=1e-6):
                return lag
        trained = ", ".join(f"{v:g}" for v in self.lags_ps)
        raise HemeplmError(f"the lag must be one the model was trained at ({trained} ps), got {lag_ps!r}")

    def nearest_lag(self, spacing_ps: float) -> int:
        """The trained lag (frames of the training MD) nearest to ``spacing_ps`` in log: ``data.lag`` for a model
        of one lag."""
        spacing = max(spacing_ps, 1e-12)
        return min(zip(self.model.lags, self.lags_ps), key=lambda lp: abs(math.log(lp[1] / spacing)))[0]

    @property
    def lag(self) -> int:
        """The time between generated frames in frames of the training MD (:attr:`lag_ps`, else ``data.lag``)."""
        return self.cfg.data.lag if self.lag_ps is None else self.trained_lag(self.lag_ps)

    @property
    def frame_ps(self) -> float:
        """Time between generated frames (ps): :attr:`lag` times the training data's frame spacing."""
        return self.lag * self.model.static_info["timestep_ps"]

    @property
    def denoiser_steps(self) -> int:
        """Denoiser calls per window (:meth:`~hemeplm.diffusion.GaussianDiffusion.paths`: the path from noise and
        the restarts)."""
        return self.diffusion.calls(self.sampler, self.steps, **self.restart_settings)

    @torch.no_grad()
    def window_sample(self, coords: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                      lag: int | None = None) -> torch.Tensor:
        """Generate one window per sample, projected (:attr:`projection_steps`; with :attr:`fold_hold` > 0
        keeping the fold of the window's key frame, ``coords[:, 0]``); appends to :attr:`projection_log`.

        Args:
            coords: (S, T, A, 3) Å, known entries filled (others ignored).
            mask: (T, N) or (S, T, N) bool, True = known.
            lag: the windows' lag in frames of the training MD, one the model was trained at (None: :attr:`lag`).
        Returns:
            (S, T, A, 3); the atoms of known tokens are returned exactly.
        """
        m = self.model
        s = coords.shape[0]
        mask = mask.expand(s, *mask.shape[-2:]).to(coords.device)
        key = coords[:, 0]
        atom_known = mask[:, :, m.tokens.atom_token]  # (S, T, A)
        x = m.sample_window(self.diffusion, coords, mask, generator, self.steps, self.sampler, self.progress,
                            denoiser_for, self.temperature, self.restart_settings, self.lag if lag is None else lag,
                            self.cfg.precision if self.precision is None else self.precision)
        st = self.cfg.structure
        projected, taken = project(lambda v: m.coordinates(v, key), x, ~mask, m.internal,
                                   steps=self.projection_steps, restraint=st.project_restraint,
                                   fold=key if self.fold_hold > 0 else None, fold_sigmas=self.fold_hold,
                                   peptide=m.peptide, atom_token=m.tokens.atom_token)
        out = m.coordinates(projected, key)
        moved = (out - m.coordinates(x, key)).norm(dim=-1) if taken else out.new_zeros(out.shape[:-1])
        generated = (~atom_known).to(moved.dtype)  # (S, T, A)
        count = generated.sum((1, 2)).clamp(min=1)
        self.projection_log.append({
            "mean_A": (moved * generated).sum((1, 2)) / count, "max_A": (moved * generated).amax((1, 2)),
            "moved_fraction": ((moved > PROJECTION_MOVED_A).to(moved.dtype) * generated).sum((1, 2)) / count,
            "steps_taken": torch.full((s,), float(taken))})
        return torch.where(atom_known[..., None], coords, out)

    def fill(self, coords: torch.Tensor, known: torch.Tensor, starts: list[int], generator: torch.Generator,
             desc: str = "windows") -> torch.Tensor:
        """Fill a timeline window by window.

        Args:
            coords: (S, F, A, 3) with known entries set; F >= start + T for every start.
            known: (F, N) bool.
            starts: window start frames, in order.
        Returns:
            (S, F, A, 3) with every window generated.
        """
        from tqdm import tqdm

        t = self.window
        known = known.clone()
        for s in tqdm(starts, desc=desc, disable=not self.progress or len(starts) < 2):
            out = self.window_sample(coords[:, s:s + t], known[s:s + t], generator)
            coords[:, s:s + t] = out
            known[s:s + t] = True
        return coords

    def window_starts(self, n_frames: int, overlap: int = 1) -> list[int]:
        """Start frames of the windows of :attr:`window` frames, overlapping by ``overlap`` frames, that cover
        ``n_frames`` frames (the last window may reach past them)."""
        return list(range(0, max(1, n_frames - overlap), self.window - overlap))

    @property
    def history(self) -> int:
        """Frames a forecast window continues from (``tasks.history``)."""
        return self.cfg.tasks.history

    def forecast_starts(self, n_frames: int) -> list[int]:
        """Start frames of the windows of a forecast of ``n_frames`` frames (:meth:`forecast`): each window after
        the first continues from the last :attr:`history` frames of the one before."""
        return self.window_starts(n_frames, self.history)

    def _timeline(self, n_samples: int, starts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty (S, F', A, 3) coordinates and (F', N) known mask holding the windows that start at ``starts``
        (F' = the last start + :attr:`window`)."""
        total = starts[-1] + self.window
        coords = torch.zeros(n_samples, total, self.model.n_atoms, 3, device=device)
        known = torch.zeros(total, self.model.tokens.kind.numel(), dtype=torch.bool, device=device)
        return coords, known

    def forecast(self, start: torch.Tensor, num_frames: int, n_samples: int, generator) -> torch.Tensor:
        """start (A, 3) -> (S, num_frames, A, 3); frame 0 is ``start``. The first window is given ``start``;
        each later one its first :attr:`history` frames, the last ones its predecessor generated."""
        starts = self.forecast_starts(num_frames)
        coords, known = self._timeline(n_samples, starts, start.device)
        coords[:, 0] = start
        known[0] = True
        # every window is keyed on the first of its given frames (the fold hold, when on, keeps that frame's fold)
        return self.fill(coords, known, starts, generator, "forecast windows")[:, :num_frames]

    def upsample(self, coarse: torch.Tensor, n_samples: int, generator) -> torch.Tensor:
        """coarse (Fc, A, 3) -> (S, (Fc-1)*k+1, A, 3) with the coarse frames every k-th frame.

        Every window starts at a coarse frame and knows exactly training's upsample mask (its frames
        0, k, 2k, ...); nothing a window generates is given to another. Consecutive windows start
        ``span`` = k·⌊(T-1)/k⌋ frames apart (the last one ends on the last coarse frame) and window i
        supplies the frames from its start to the next window's start.
        """
        k, t = self.cfg.tasks.upsample_factor, self.window
        span = k * ((t - 1) // k)
        n_coarse, n = coarse.shape[0], (coarse.shape[0] - 1) * k + 1
        if span == 0:
            raise HemeplmError(f"upsampling by {k} (tasks.upsample_factor) needs windows of more than {k} frames; "
                               f"the model's have {t}")
        if n - 1 < span:
            raise HemeplmError(f"upsampling needs at least {span // k + 1} coarse frames (one window of {t} frames "
                               f"holds {span // k + 1} at factor {k}); {n_coarse} given")
        starts = [*range(0, n - 1 - span, span), n - 1 - span]
        first = torch.tensor(starts, device=coarse.device) // k
        win = coarse.new_zeros(len(starts), t, *coarse.shape[1:])
        win[:, ::k] = coarse[first[:, None] + torch.arange(span // k + 1, device=coarse.device)]  # (W, T/k, A, 3)
        mask = task_mask("upsample", t, self.model.token_is_ligand, k)
        filled = self.window_sample(win.repeat(n_samples, 1, 1, 1), mask, generator)
        filled = filled.view(n_samples, len(starts), *filled.shape[1:])
        out = coarse.new_empty(n_samples, n, *coarse.shape[1:])
        for i, (lo, hi) in enumerate(zip(starts, [*starts[1:], n])):
            out[:, lo:hi] = filled[:, i, :hi - lo]
        return out

    def inpaint(self, frames: torch.Tensor, n_samples: int, generator, tokens: torch.Tensor | None = None
                ) -> torch.Tensor:
        """frames (F, A, 3), protein known -> (S, F, A, 3) with the ligand ``tokens`` (N,) bool
        (default: every ligand token) generated, all their atoms."""
        m = self.model
        hidden = m.token_is_ligand if tokens is None else tokens.to(frames.device) & m.token_is_ligand
        n = frames.shape[0]
        starts = self.window_starts(n)
        coords, known = self._timeline(n_samples, starts, frames.device)
        coords[:, :n] = frames
        known[:] = ~hidden
        coords[:, n:] = frames[-1]  # padding frames: protein held at the last frame
        out = self.fill(coords, known, starts, generator, "inpaint windows")
        return out[:, :n]

    def tps(self, start: torch.Tensor, end: torch.Tensor, num_frames: int, n_samples: int, generator,
            span_ps: float | None = None) -> torch.Tensor:
        """start, end (A, 3) -> (S, num_frames, A, 3) path from ``start`` to ``end`` (both exact).

        With ``span_ps``, the time between the end frames, a model trained at several lags fills each level at
        the trained lag nearest (in log) to that level's frame spacing, coarse first, then finer; without it, or
        with :attr:`lag_ps` set, at :attr:`lag` throughout."""
        t = self.window
        mask = task_mask("tps", t, self.model.token_is_ligand)
        path = torch.stack([start, end])[None].expand(n_samples, -1, -1, -1)
        while True:
            pairs = path.shape[1] - 1
            win = torch.zeros(n_samples * pairs, t, *start.shape, device=start.device)
            win[:, 0] = path[:, :-1].reshape(-1, *start.shape)
            win[:, -1] = path[:, 1:].reshape(-1, *start.shape)
            lag = None if span_ps is None or self.lag_ps is not None else self.nearest_lag(span_ps / (pairs * (t - 1)))
            filled = self.window_sample(win, mask, generator, lag).view(n_samples, pairs, t, *start.shape)
            path = torch.cat([filled[:, :, :-1].reshape(n_samples, pairs * (t - 1), *start.shape), path[:, -1:]], 1)
            if path.shape[1] >= num_frames:
                break
        idx = torch.linspace(0, path.shape[1] - 1, num_frames).round().long()
        return path[:, idx]


def projection_summary(log_entries: list[dict], n_samples: int, steps: int) -> dict:
    """The summary's ``projection``: what the projection did, per generated window and in all.

    Args:
        log_entries: :attr:`Sampler.projection_log` of one task; each entry's rows are the task's samples
            outer, so a call of R rows covers R / ``n_samples`` windows (upsampling and transition paths
            generate several windows in one call); n_samples: samples of the task; steps: projection steps.
    Returns:
        ``steps`` (the most a window may take), ``moved_threshold_A``, ``windows`` (one per window, in generation
        order: ``mean_A``, the mean displacement of its generated atoms over its frames and the samples; ``max_A``,
        the largest; ``moved_fraction``, the fraction of them moved farther than ``moved_threshold_A``;
        ``steps_taken``, the steps its call took before nothing was violated) and ``mean_A``, ``max_A``,
        ``moved_fraction`` and ``steps_taken`` (the mean) over all windows.
    """
    windows = []
    for entry in log_entries:
        rows = {k: v.detach().cpu().double().view(n_samples, -1) for k, v in entry.items()}
        for w in range(rows["mean_A"].shape[1]):
            windows.append({"mean_A": float(rows["mean_A"][:, w].mean()), "max_A": float(rows["max_A"][:, w].max()),
                            "moved_fraction": float(rows["moved_fraction"][:, w].mean()),
                            "steps_taken": float(rows["steps_taken"][:, w].max())})
    overall = {k: float(np.mean([w[k] for w in windows])) if windows else 0.0
               for k in ("mean_A", "moved_fraction", "steps_taken")}
    overall["max_A"] = max((w["max_A"] for w in windows), default=0.0)
    rounded = [{k: round(v, 4) for k, v in w.items()} for w in windows]
    return {"steps": steps, "moved_threshold_A": PROJECTION_MOVED_A, **{k: round(v, 4) for k, v in overall.items()},
            "windows": rounded}


def conditioned_frames(task: str, n_frames: int, upsample_factor: int) -> list[int]:
    """Output frames a task gives exactly: forecast 0; tps 0 and the last; upsample every k-th; inpaint none
    (it gives the protein, all atoms but the summary's ``inpainted_atoms``, in every frame)."""
    if task == "forecast":
        return [0]
    if task == "tps":
        return [0, n_frames - 1]
    if task == "upsample":
        return list(range(0, n_frames, upsample_factor))
    return []


def _check_atoms(gen: Sampler, topology, where) -> None:
    """Refuse kept atoms (an mdtraj Topology) that are not the checkpoint's system, naming ``where``."""
    info = gen.model.static_info
    names = [a.name for a in topology.atoms]
    resnames = [a.residue.name for a in topology.atoms]
    if topology.n_atoms != info["n_atoms"] or names != info["atom_names"] or resnames != info["residue_names"]:
        raise HemeplmError(f"its kept atoms ({topology.n_atoms}) do not match the checkpoint's system "
                           f"({info['n_atoms']} atoms, same names and order expected)", where)


def load_checked(gen: Sampler, topology: str | Path, files: list[str | Path], truncated: str | None = None,
                 timestep_ps: float | None = None):
    """The :class:`~hemeplm.data.load.MDSystem` of ``files`` (superposed together, with any labels beside
    them), read with the checkpoint's data settings and checked against the checkpoint's system.

    ``truncated`` (None: the checkpoint's ``data.truncated``) and ``timestep_ps`` (the files' frame spacing;
    None: from the files) as :func:`~hemeplm.data.load.load_system` takes them."""
    cfg = gen.cfg.data
    system = load_system(topology, files, ligand=cfg.ligand, hydrogens=cfg.hydrogens,
                         truncated=cfg.truncated if truncated is None else truncated, timestep_ps=timestep_ps)
    _check_atoms(gen, system.topology, topology)
    return system


@dataclass
class Given:
    """Frames given to a task, as the model sees them (:func:`given_from_files`, :func:`given_from_trajectories`).

    Attributes:
        frames: (F, A, 3) Å on the model's device, superposed on the protein Cα of the first frame of
            the first input.
        timestep_ps: time between the input's frames; its frame i is at i · ``timestep_ps``, the time
            since its first frame.
        source: what errors name: the file, or the given trajectory.
        what: how a message calls the input ("the file", "the trajectory").
        topology: mdtraj Topology of the kept atoms, with the input's residue numbers and chain IDs.
        codes: (R,) insertion code of each residue of ``topology`` (" " for none).
    """

    frames: torch.Tensor
    timestep_ps: float
    source: str
    what: str
    topology: object
    codes: list[str]

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def pdb_template(self) -> str:
        """The kept atoms as PDB text (:func:`~hemeplm.data.numbering.topology_pdb`) in the input's numbering."""
        return topology_pdb(self.topology, self.frames[0].cpu().numpy(), self.codes)


def given_from_files(gen: Sampler, topology: str | Path, files: list[str | Path], truncated: str | None = None,
                     timestep_ps: float | None = None) -> list[Given]:
    """One :class:`Given` per file, read with the checkpoint's data settings (:func:`load_checked`)."""
    system = load_checked(gen, topology, files, truncated, timestep_ps)
    codes = kept_insertion_codes(topology, system.full_topology, system.source_index, system.topology)
    device = gen.model.norm_mean.device
    return [Given(torch.from_numpy(s).to(device), system.timestep_ps, str(f), "the file", system.topology, codes)
            for s, f in zip(system.segments, files)]


def given_from_trajectories(gen: Sampler, trajs: list, chunk: int = 1024) -> list[Given]:
    """One :class:`Given` per ``mdtraj.Trajectory``, kept and superposed as :func:`given_from_files` keeps
    and superposes files (:func:`~hemeplm.data.load.load_system` with the checkpoint's data settings),
    in memory: no file is written. The frame spacing is that of the trajectory's times (one frame: 1 ps)."""
    cfg = gen.cfg.data
    device = gen.model.norm_mean.device
    out, reference, ca = [], None, None
    for i, traj in enumerate(trajs):
        name = "the given trajectory" if len(trajs) == 1 else f"given trajectory {i}"
        top = traj.topology
        ligand = set(select_ligand(top, cfg.ligand, name).tolist())
        keep = np.array([a.index for a in top.atoms
                         if (a.residue.is_protein or a.index in ligand)
                         and (cfg.hydrogens or a.element is None or a.element.symbol != "H")], dtype=np.int64)
        kept = top.subset(keep)
        _check_atoms(gen, kept, name)
        if ca is None:
            kept_ligand = {j for j, k in enumerate(keep.tolist()) if k in ligand}
            ca = np.array([a.index for a in kept.atoms
                           if a.name == "CA" and a.residue.is_protein and a.index not in kept_ligand])
        frames = np.empty((traj.n_frames, len(keep), 3), dtype=np.float32)
        for lo in range(0, traj.n_frames, chunk):
            xyz = traj.xyz[lo:lo + chunk, keep].astype(np.float64) * 10.0
            if reference is None:
                reference = xyz[0, ca]
            rot, trans = superposition(xyz[:, ca], reference)
            frames[lo:lo + chunk] = np.einsum("fij,faj->fai", rot, xyz) + trans[:, None]
        dt = float(traj.time[1] - traj.time[0]) if traj.n_frames > 1 else 1.0
        if not dt > 0:
            raise HemeplmError(f"its frame times do not increase ({traj.time[0]:g}, {traj.time[1]:g} ps); "
                               "set the trajectory's time", name)
        out.append(Given(torch.from_numpy(frames).to(device), dt, name, "the trajectory", kept,
                         [" "] * kept.n_residues))
    return out


def load_frames(gen: Sampler, topology: str | Path, files: list[str | Path]) -> tuple[list[torch.Tensor], float]:
    """Frames of ``files`` (superposed together), checked against the checkpoint's system.

    Returns:
        one (F_i, A, 3) tensor in Å per file, on the model's device, and the time between frames (ps).
    """
    given = given_from_files(gen, topology, files)
    return [g.frames for g in given], given[0].timestep_ps


def _index(given: Given, index: int | None, default: int, what: str) -> int:
    """``index`` (None: ``default``) of a frame of ``given``; negative or past its end: a HemeplmError."""
    n = given.n_frames
    index = default if index is None else index
    if index < 0:
        raise HemeplmError(f"{what} frame {index} is negative; frames are numbered from 0 ({given.what} has {n} "
                           "frames)", given.source)
    if index >= n:
        raise HemeplmError(f"{what} frame {index} is out of range ({given.what} has {n} frames)", given.source)
    return index


def given_stride(gen: Sampler, task: str, dt: float, path, n_frames: int) -> int:
    """File frames between consecutive given frames of ``inpaint`` or ``upsample``.

    Inpainting gives the model frames at its own spacing (:attr:`Sampler.frame_ps`), upsampling
    coarse frames ``tasks.upsample_factor`` times that apart; a file whose frames are ``dt`` ps
    apart is read every ``stride``-th frame. ``n_frames`` given frames: one frame has no spacing (stride 1).

    Raises:
        HemeplmError: naming ``path``, when that spacing is not a whole multiple of ``dt``.
    """
    if n_frames == 1:
        return 1
    factor = gen.cfg.tasks.upsample_factor if task == "upsample" else 1
    need = factor * gen.frame_ps
    stride = round(need / dt)
    if stride < 1 or abs(stride * dt - need) > 1e-3 * need:
        why = f"tasks.upsample_factor {factor} x " if task == "upsample" else ""
        raise HemeplmError(f"its frames are {dt:g} ps apart, but {task} with this checkpoint needs given frames "
                           f"{need:g} ps apart ({why}the model's {gen.frame_ps:g} ps: data.lag x the training "
                           f"data's spacing), which is not a whole multiple of {dt:g} ps", path)
    return stride


def tps_length(window: int, num_frames: int) -> tuple[int, int]:
    """Frames of a transition path of :meth:`Sampler.tps` before it is resampled to ``num_frames``, and of
    the level before (each level fills every gap of the previous one with a ``window``-frame path)."""
    previous, length = 2, window
    while length < num_frames:
        previous, length = length, (length - 1) * (window - 1) + 1
    return length, previous


def _timeline_frames(window: int, n_frames: int, overlap: int = 1) -> int:
    """Frames of :meth:`Sampler._timeline` for the windows :meth:`Sampler.window_starts` places over ``n_frames``
    frames (overlapping by ``overlap`` frames), without listing them for a request that may be absurdly long."""
    n_windows = -(-max(1, n_frames - overlap) // (window - overlap))
    return (n_windows - 1) * (window - overlap) + window


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000


def memory_limit(device: torch.device) -> int:
    """Bytes of memory a run on ``device`` can hold at most: the machine's RAM (every output passes
    through it), and on a GPU its memory too."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        ram = min(ram, torch.cuda.get_device_properties(device).total_memory)
    return ram


def check_memory(gen: Sampler, task: str, n_frames: int, num_samples: int) -> None:
    """Refuse, before any work, a request whose coordinates alone cannot fit in memory
    (:func:`memory_limit`): ``num_samples`` samples of ``n_frames`` output frames (for upsample and
    inpaint: the frames they fill), each holding the model's atoms as float32."""
    t = gen.window
    if task == "tps":
        length, previous = tps_length(t, n_frames)
        frames = length + (previous - 1) * t
    elif task == "upsample":
        frames = 2 * n_frames
    else:
        frames = _timeline_frames(t, n_frames, gen.history if task == "forecast" else 1)
    need = num_samples * frames * gen.model.n_atoms * 3 * 4
    limit = memory_limit(gen.model.norm_mean.device)
    if need > limit:
        raise HemeplmError(f"{n_frames} frames x {num_samples} sample(s) of {gen.model.n_atoms} atoms need at least "
                           f"{_bytes(need)} for their coordinates alone, more than this machine's {_bytes(limit)} of "
                           "memory; generate fewer frames or samples (a forecast continues from its last frame)")


def check_request(gen: Sampler, task: str, num_frames: int | None, num_samples: int,
                  has_end: bool = True) -> None:
    """The values of a request that need no frames, checked before any work: ``task``, ``num_frames``
    (at least 2: the start frame and one more), ``num_samples`` (at least 1), a tps end frame, and the
    memory a forecast's or path's coordinates need (:func:`check_memory`)."""
    if task not in TASKS:
        raise HemeplmError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    for name, value, low in (("num_frames", num_frames, 2), ("num_samples", num_samples, 1)):
        if value is None and name == "num_frames":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise HemeplmError(f"{name} must be an integer of at least {low}, got {value!r}")
    if task == "tps" and not has_end:
        raise HemeplmError("--task tps needs an end frame (--end J, and --end-frames FILE if it is in another file)")
    if task in ("forecast", "tps"):
        check_memory(gen, task, num_frames or gen.window, num_samples)


@dataclass
class Generated:
    """What :func:`generate` made.

    Attributes:
        coords: (S, F, A, 3) Å.
        time_ps: (F,) time of each generated frame: the start frame's time in the input plus k times
            ``timestep_ps`` (see :func:`generate`).
        timestep_ps: the time between generated frames.
        stride, given_frames, inpainted: inpainting and upsampling: file frames between given frames, the
            first and last given frame; inpainting: the indices of the atoms generated (else None).
        uncertainty: (S, F) Å (:func:`~hemeplm.generate.confidence.frame_uncertainty`), or None when not computed.
        projection: what the structure projection moved (:func:`projection_summary`).
        conditioned_frames: the output frames the task gave exactly (:func:`conditioned_frames`).
        wall_seconds: sampling time; confidence_seconds: the uncertainty's time (None when not computed).
    """

    coords: torch.Tensor
    time_ps: np.ndarray
    timestep_ps: float
    stride: int | None = None
    given_frames: list[int] | None = None
    inpainted: list[int] | None = None
    uncertainty: torch.Tensor | None = None
    wall_seconds: float = 0.0
    confidence_seconds: float | None = None
    projection: dict | None = None
    conditioned_frames: list[int] | None = None


def generate(gen: Sampler, task: str, given: Given, end_given: Given | None = None, start: int | None = None,
             end: int | None = None, num_frames: int | None = None, num_samples: int = 1, seed: int = 0,
             inpaint_atoms: str | None = None, confidence: bool = True) -> Generated:
    """The one task dispatch of ``sample.py`` (:func:`run_task`) and the Python API (:mod:`hemeplm.generate.api`).

    Args:
        given: the input frames; end_given: a tps end frame's other input (None: ``given``).
        start, end: frame indices, from 0 (negative: refused). forecast: from frame ``start`` (None: 0);
            tps: from ``start`` to ``end`` (None: the last frame); inpaint, upsample: frames ``start..end``.
        num_frames: frames to generate for forecast and tps (None: one window), at least 2.
        confidence: compute the per-frame uncertainty (costs up to a few times the sampling).

    Every value is checked before any sampling. Times: the input's frame i is at i times its frame spacing
    (the time since its first frame); generated frame k is at the start frame's time (frame ``start``) plus
    k times the generated spacing: the model's :attr:`Sampler.frame_ps` for forecast, inpaint and upsample;
    for a tps path within one input the real time between its end frames over ``num_frames - 1`` (a path
    from frame 170 to 199 of a 1 ps file, 30 frames: 1 ps), for end frames in two inputs (no common time)
    the model's spacing of the path before resampling (:func:`tps_length`).
    """
    check_request(gen, task, num_frames, num_samples, has_end=end is not None or end_given is not None)
    gen.projection_log.clear()
    frames, dt = given.frames, given.timestep_ps
    generator = torch.Generator().manual_seed(seed)
    n_out = num_frames or gen.window
    stride = given_frames = inpainted = None
    spacing = gen.frame_ps
    if task == "forecast":
        first = _index(given, start, 0, "start")
        began = time.time()
        result = gen.forecast(frames[first], n_out, num_samples, generator)
    elif task == "tps":
        other = given if end_given is None else end_given
        first = _index(given, start, 0, "start")
        last = _index(other, end, other.n_frames - 1, "end")
        if end_given is None and last != first:
            spacing = abs(last - first) * dt / (n_out - 1)
        else:
            spacing = (tps_length(gen.window, n_out)[0] - 1) * gen.frame_ps / (n_out - 1)
        began = time.time()
        real = abs(last - first) * dt if end_given is None and last != first else None
        result = gen.tps(frames[first], other.frames[last], n_out, num_samples, generator, real)
    else:
        n = given.n_frames
        first = 0 if start is None else start
        hi = n if end is None else end + 1
        if first < 0 or hi < 1:
            raise HemeplmError(f"frame range {first}..{hi - 1} holds a negative frame; frames are numbered from 0",
                               given.source)
        if not first < hi <= n:
            raise HemeplmError(f"frame range {first}..{hi - 1} is out of range ({given.what} has {n} frames)",
                               given.source)
        stride = given_stride(gen, task, dt, given.source, hi - first)
        given_frames = [first, first + (hi - 1 - first) // stride * stride]
        n_given = (hi - 1 - first) // stride + 1
        check_memory(gen, task, n_given if task == "inpaint" else (n_given - 1) * gen.cfg.tasks.upsample_factor + 1,
                     num_samples)
        began = time.time()
        if task == "inpaint":
            tokens, inpainted = inpaint_tokens(gen, given.source, inpaint_atoms)
            result = gen.inpaint(frames[first:hi:stride], num_samples, generator, tokens)
        else:
            result = gen.upsample(frames[first:hi:stride], num_samples, generator)
    wall = time.time() - began
    projection = projection_summary(gen.projection_log, num_samples, gen.projection_steps)
    uncertainty = seconds = None
    if confidence:
        began = time.time()
        uncertainty = frame_uncertainty(gen, result, accumulate=task == "forecast", seed=seed)
        seconds = time.time() - began
    times = first * dt + np.arange(result.shape[1]) * spacing
    return Generated(result, times, spacing, stride, given_frames, inpainted, uncertainty, wall, seconds, projection,
                     conditioned_frames(task, int(result.shape[1]), gen.cfg.tasks.upsample_factor))


def run_task(gen: Sampler, task: str, topology, frames_file, out, start: int | None = None, end: int | None = None,
             end_file=None, num_frames: int | None = None, num_samples: int = 1, seed: int = 0,
             inpaint_atoms: str | None = None, force: bool = False, energies: bool = False,
             confidence: bool = True, write_summary: bool = True, truncated: str | None = None,
             timestep_ps: float | None = None) -> dict:
    """Everything ``sample.py`` does: :func:`generate` on frames read from files, then the outputs;
    returns the JSON summary (also written beside the output, last, unless ``write_summary`` is False:
    the caller then writes it after its own outputs).

    The outputs are checked (:func:`~hemeplm.io.check_outputs`) and every value of the request
    (:func:`check_request`) before any work, and written atomically (a temporary file, then a rename).
    The trajectories' times are :func:`generate`'s; the PDB holds the input topology's residue
    numbers, chain IDs and insertion codes. ``truncated`` and ``timestep_ps`` are :func:`load_checked`'s.

    With ``energies``, the summary's ``energies`` holds the energy model's predictions for every
    generated frame (:func:`hemeplm.generate.energies.predict`): ``residues`` (R,), ``energy_kcal_mol``
    (S, F) and ``residue_interaction_kcal_mol`` (S, F, R).

    Inpainting and upsampling read frames ``start..end`` of ``frames_file`` every ``stride``-th
    frame (:func:`given_stride`); the summary records ``stride`` and the first and last frame used
    (``given_frames``), for inpainting the indices of the atoms generated (``inpainted_atoms``), and per
    sample and frame the uncertainty of :func:`hemeplm.generate.confidence.frame_uncertainty` (``uncertainty_A``, Å;
    higher = less confident; accumulated along the chained windows of a forecast). Without ``confidence``
    the summary has no ``uncertainty_A`` and its ``confidence`` says it was not computed.
    ``conditioned_frames`` lists the output frames the task gives exactly (:func:`conditioned_frames`;
    ``hemeplm evaluate`` leaves them out of every metric), ``projection`` what the structure projection
    moved (:func:`projection_summary`) and ``fold_hold`` the fold hold's tolerance (0: off).
    """
    import mdtraj

    out = Path(out)
    if out.suffix.lower() not in (".xtc", ".dcd"):
        raise HemeplmError("output must end in .xtc or .dcd", out)
    trajs, pdb_path, json_path = output_paths(out, num_samples)
    check_outputs([*trajs, pdb_path, json_path], force, out)
    check_request(gen, task, num_frames, num_samples, has_end=end is not None or end_file is not None)
    files = [frames_file] + ([end_file] if task == "tps" and end_file is not None else [])
    given = given_from_files(gen, topology, files, truncated, timestep_ps)
    made = generate(gen, task, given[0], given[1] if len(given) > 1 else None, start=start, end=end,
                    num_frames=num_frames, num_samples=num_samples, seed=seed, inpaint_atoms=inpaint_atoms,
                    confidence=confidence)
    result = made.coords
    top = given[0].topology
    odd = [r for r in top.residues if not -999 <= r.resSeq <= 9999]
    if odd:
        log.warning("%s: residue numbers such as %s%d do not fit a PDB file's four columns; %s holds them as "
                    "mdtraj writes them (modulo 10000)", topology, odd[0].name, odd[0].resSeq, pdb_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = result.cpu().numpy() / 10.0
    for path, xyz in zip(trajs, arr):
        atomic_save(mdtraj.Trajectory(xyz, top, time=made.time_ps), path)
    write_pdb(pdb_path, given[0].pdb_template(), result[0, 0].cpu().numpy())
    summary = {"task": task, "topology": str(topology), "frames": str(frames_file), "start": start, "end": end,
               "stride": made.stride, "given_frames": made.given_frames,
               "num_frames": int(result.shape[1]), "num_samples": num_samples, "seed": seed,
               "sampler": gen.sampler, "steps": gen.denoiser_steps, "noise_scale": gen.temperature,
               **gen.restart_settings,
               "project_steps": gen.projection_steps,
               "fold_hold": gen.fold_hold, "projection": made.projection,
               "conditioned_frames": made.conditioned_frames,
               "timestep_ps": made.timestep_ps, "start_time_ps": round(float(made.time_ps[0]), 6),
               "trajectories": [str(p) for p in trajs], "topology_pdb": str(pdb_path),
               "wall_seconds": round(made.wall_seconds, 3), "inpaint_atoms": inpaint_atoms,
               "inpainted_atoms": made.inpainted}
    if made.uncertainty is not None:
        summary["uncertainty_A"] = made.uncertainty.cpu().numpy().round(4).tolist()
        summary["confidence"] = "uncertainty_A: per-frame self-consistency (hemeplm.generate.confidence)"
        summary["confidence_seconds"] = round(made.confidence_seconds, 3)
    else:
        summary["confidence"] = "not computed (--no-confidence)"
        summary["confidence_seconds"] = None
    if energies:
        preds = [predict(gen.model, sample) for sample in result]
        summary["energies"] = {
            "residues": list(gen.model.static_info["interaction_residues"]),
            "energy_kcal_mol": [np.round(p["energy_kcal_mol"], 3).tolist() for p in preds],
            "residue_interaction_kcal_mol": [np.round(p["residue_interaction_kcal_mol"], 3).tolist() for p in preds]}
    if write_summary:
        write_json(json_path, summary)
    return summary


def write_json(path: str | Path, summary: dict) -> None:
    """Write a sample summary as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(summary, indent=2))


def inpaint_tokens(gen: Sampler, topology, selection: str | None) -> tuple[torch.Tensor | None, list[int]]:
    """The ligand tokens to inpaint for ``selection`` (mdtraj syntax; None: the whole ligand) and the atoms
    they generate.

    A token is generated whole, so every ligand token holding a selected atom is inpainted with all
    its atoms; the atoms that adds to the selection are logged.

    Returns:
        (N,) bool tokens (None for every ligand token) and the sorted indices of the generated atoms.
    """
    m = gen.model
    is_ligand_atom = m.atoms.is_ligand  # (A,)
    if selection is None:
        return None, torch.nonzero(is_ligand_atom).flatten().tolist()
    top = m.topology()
    try:
        atoms = top.select(selection)
    except Exception as exc:
        raise HemeplmError(f"invalid --inpaint-atoms selection {selection!r}: {exc}", topology) from exc
    chosen = torch.zeros_like(is_ligand_atom)
    chosen[torch.as_tensor(atoms, dtype=torch.long, device=chosen.device)] = True
    chosen &= is_ligand_atom
    if not chosen.any():
        raise HemeplmError(f"--inpaint-atoms {selection!r} matches no ligand atom", topology)
    tokens = torch.zeros_like(m.token_is_ligand).index_fill_(0, m.tokens.atom_token[chosen], True)
    generated = tokens[m.tokens.atom_token]
    added = torch.nonzero(generated & ~chosen).flatten().tolist()
    if added:
        log.warning("--inpaint-atoms %r: ligand tokens are generated whole; also generating %s", selection,
                    " ".join(str(top.atom(i)) for i in added))
    return tokens, torch.nonzero(generated).flatten().tolist()
