"""Training: data, model, diffusion objective, EMA, checkpoints, logging, DDP.

``train(cfg)`` is what ``train.py`` calls. Randomness is derived from
``(seed, step, rank)`` at every step (batch choice, task, diffusion noise), so
a resumed run continues exactly as an uninterrupted one would (bit for bit on
the CPU, where deterministic algorithms are switched on). Under
``torchrun`` every rank trains on its share of each global batch and rank 0
alone logs and saves.

Reliability: SIGTERM or SIGINT saves a checkpoint at the end of the step and
exits cleanly (all ranks stop at the same step); a non-finite loss or gradient
stops with an error naming the step and the windows, before anything is saved;
``--resume`` restores the checkpoint and drops the metrics logged after it (those
steps are trained again). Under ``torchrun`` a rank waits at most
``dist_timeout_s`` seconds (config, default 600) for the others, so the loss of a
rank ends the job instead of hanging it.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import random
import secrets
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hemeplm.train.checkpoint import load_checkpoint, load_state, save_checkpoint
from hemeplm.config import Config, save_config, to_dict
from hemeplm.data.dataset import LabelledFrames, WindowDataset, featurize
from hemeplm.device import in_precision, resolve_device
from hemeplm.diffusion import GaussianDiffusion
from hemeplm.errors import HemeplmError
from hemeplm.models.surrogate import HemePLM, system_static
from hemeplm.io import to_numpy
from hemeplm.geometry.structure import structure_terms
from hemeplm.tasks import active_tasks, draw_training_mask, task_mask
from hemeplm.generate.energies import label_predictor
from hemeplm.evaluate.energy import evaluate_energies
from hemeplm.evaluate.report import log_to_wandb

log = logging.getLogger(__name__)

#: residue frames the FAPE term looks from in each step (drawn at random: its cost stays linear in atoms)
FAPE_FRAMES = 32


class Objective(nn.Module):
    """Loss of one step: diffusion ε loss with the structure terms on its clean-data estimate, plus,
    when the data has labels, the energy model's losses on labelled frames.

    ``forward(coords (B, T, A, 3), mask (B, T, N), t (B,), generator, labelled)`` returns a dict of
    scalar losses; ``loss`` is the total. The structure terms (:mod:`hemeplm.geometry.structure`: inter-token
    bonds and angles, clashes, peptide planarity and angles, the frame-aligned point error against the true
    frames from :data:`FAPE_FRAMES` random residue frames, the true frames' contact distances, all of them and
    the ligand's alone; all in Å or rad) are computed on the decoded x̂0 of each window and weighted by ᾱ_t,
    toward low noise, on the windows noised to at most ``noise_limit`` (``structure.noise_limit``) of the steps.
    With ``key_noise`` (``tasks.key_noise``) each training window starts from :meth:`perturbed_start` frames.
    The denoiser runs in ``precision`` (``precision``: :func:`~hemeplm.device.in_precision`).
    ``labelled`` is a batch of :class:`~hemeplm.data.dataset.LabelledFrames` (``coords`` (F, A, 3), ``energy``
    (F,), ``forces`` (F, A, 3), ``interaction`` (F, R), ``has_interaction`` (F,)) or None; its losses are mean
    squared errors on normalised scales (energy standard deviation, force RMS, interaction fluctuation scale of
    the training frames).
    """

    def __init__(self, model: HemePLM, diffusion: GaussianDiffusion, energy_weight: float = 1.0,
                 force_weight: float = 1.0, interaction_weight: float = 1.0, bond_weight: float = 0.0,
                 clash_weight: float = 0.0, peptide_weight: float = 0.0, fape_weight: float = 0.0,
                 contact_weight: float = 0.0, ligand_contact_weight: float = 0.0, key_noise: float = 0.0,
                 input_perturbation: float = 0.0, rollout: float = 0.0, rollout_steps: int = 5,
                 noise_scale: float = 1.0, noise_limit: float = 1.0, precision: str = "float32"):
        super().__init__()
        model.check_schedule(diffusion)
        self.model, self.diffusion, self.key_noise = model, diffusion, key_noise
        self.rollout, self.rollout_steps, self.noise_scale = rollout, rollout_steps, noise_scale
        self.input_perturbation, self.noise_limit, self.precision = input_perturbation, noise_limit, precision
        self.energy_weight, self.force_weight, self.interaction_weight = energy_weight, force_weight, interaction_weight
        self.weights = {"bond": bond_weight, "clash": clash_weight, "peptide": peptide_weight, "fape": fape_weight,
                        "contact": contact_weight, "ligand_contact": ligand_contact_weight}
        self.structure: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, model: HemePLM, diffusion: GaussianDiffusion, cfg: Config) -> "Objective":
        """Build from a run's Config (energy and structure loss weights)."""
        e, s = cfg.energy, cfg.structure
        return cls(model, diffusion, e.energy_weight, e.force_weight, e.interaction_weight, s.bond_weight,
                   s.clash_weight, s.peptide_weight, s.fape_weight, s.contact_weight, s.ligand_contact_weight,
                   cfg.tasks.key_noise, cfg.diffusion.input_perturbation, cfg.tasks.rollout, cfg.tasks.rollout_steps,
                   cfg.diffusion.noise_scale, s.noise_limit, cfg.precision)

    def perturbed_start(self, coords: torch.Tensor, mask: torch.Tensor, generator=None) -> torch.Tensor:
        """Windows (B, T, A, 3) whose key frame and the given frames right after it (a forecast's history, wholly
        given under ``mask`` (B, T, N)) have every token's rigid body moved by N(0, s²) in normalised values, s
        drawn per window from U(0, ``key_noise``) and the noise drawn independently for each frame: bonds and angles
        inside tokens stay, those between them break, as in a long forecast, whose given frames are all its own
        output. The frames after them stay as they are."""
        m = self.model
        key = coords[:, 0]
        lead = mask.all(-1).long().cumprod(1).sum(1).clamp(min=1)  # (B,) the key and the history after it
        h = int(lead.max())
        values = m.values(coords[:, :h], key)  # (B, h, N, D) relative to the key
        dev = key.device if generator is None else generator.device
        s = torch.rand(len(key), generator=generator, device=dev).to(key) * self.key_noise
        noise = torch.randn(values.shape, generator=generator, device=dev).to(key)
        noise[..., 6:] = 0.0  # torsions stay: a generated frame's torsions are valid, its junctions are not
        moved = m.coordinates(values + noise * s[:, None, None, None], key)
        hit = (torch.arange(h, device=coords.device) < lead[:, None])[..., None, None]
        return torch.cat([torch.where(hit, moved, coords[:, :h]), coords[:, h:]], 1)

    def rollout_start(self, coords: torch.Tensor, mask: torch.Tensor, before: torch.Tensor, use: torch.Tensor,
                      generator=None, lag: torch.Tensor | None = None) -> torch.Tensor:
        """Windows (B, T, A, 3) whose h leading frames wholly given under ``mask`` (B, T, N) (a forecast's key and
        history) are, where ``use`` (B,) bool, the model's own: the last h frames of the window that ends with them,
        sampled raw by the model with :attr:`rollout_steps` DDIM steps at the sampling temperature
        (:attr:`noise_scale`; no restarts, for cost) from that window's first h frames (true ones), as a forecast
        continues from its previous window (whose frames sampling also projects unless ``structure.project_steps``
        is 0).
        ``before`` (B, L, A, 3), L >= T - h: the frames preceding the window at its lag (``lag`` (B,), frames of the
        MD; None: ``data.lag``). The frames after the leading ones stay the MD's."""
        m = self.model
        n = coords.shape[1]
        h = int(mask.all(-1).long().cumprod(1).sum(1).max())
        if not bool(use.any()):
            return coords
        if before.shape[1] < n - h:
            raise ValueError(f"rollout needs {n - h} frames before each window, got {before.shape[1]}")
        previous = torch.cat([before[use, before.shape[1] - (n - h):], coords[use, :h]], 1)  # (b, T, A, 3)
        x = m.sample_window(self.diffusion, previous, mask[use], generator, self.rollout_steps,
                            noise_scale=self.noise_scale, lag=None if lag is None else lag[use],
                            precision=self.precision)
        out = coords.clone()
        out[use, :h] = m.coordinates(x[:, n - h:], previous[:, 0])
        return out

    def diffusion_loss(self, coords, mask, t, generator=None, training: bool = False,
                       before: torch.Tensor | None = None, has_before: torch.Tensor | None = None,
                       lag: torch.Tensor | None = None) -> torch.Tensor:
        """ε loss plus weighted structure terms of windows (B, T, A, 3) under ``mask`` (B, T, N), keyed on
        frame 0, at ``lag`` (B,) frames of the MD (None: ``data.lag``). ``training`` applies the training-only perturbations: with ``before`` (B, L, A, 3) (the frames
        before each forecast window) and ``has_before`` (B,) bool (whether it holds them), a fraction
        :attr:`rollout` of the windows that do start from :meth:`rollout_start`; the window starts from
        :meth:`perturbed_start` and x_t carries ``input_perturbation``; validation leaves all out. The unweighted
        structure terms (means over the batch) are left in ``self.structure``."""
        m = self.model
        if training and self.rollout > 0 and before is not None:
            dev = coords.device if generator is None else generator.device
            draw = torch.rand(len(coords), generator=generator, device=dev).to(coords.device) < self.rollout
            coords = self.rollout_start(coords, mask, before, draw & has_before, generator, lag)
        if training and self.key_noise > 0:
            coords = self.perturbed_start(coords, mask, generator)
        key = coords[:, 0]
        node_mask = mask[:, 0][:, m.tokens.atom_token]
        cond, _ = m.condition(key, None if bool(node_mask.all()) else node_mask, lag)

        def structure(x0_hat: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
            frames = None
            if self.weights["fape"] > 0:
                residues = m.tokens.frame_atoms.shape[0]
                pick = torch.randperm(residues, generator=generator, device=coords.device if generator is None
                                      else generator.device)[:FAPE_FRAMES].to(coords.device)
                frames = m.tokens.frame_atoms[pick]
            terms = structure_terms(m.coordinates(x0_hat, key), m.internal,
                                    m.peptide if self.weights["peptide"] > 0 else None, coords, frames,
                                    self.weights["contact"] > 0 or self.weights["ligand_contact"] > 0,
                                    m.atoms.is_ligand if self.weights["ligand_contact"] > 0 else None)
            self.structure = {k: (alpha_bar * v).sum().detach() / alpha_bar.sum() for k, v in terms.items()}
            return sum(self.weights[k] * v for k, v in terms.items())

        use = any(w > 0 for w in self.weights.values())
        return self.diffusion.loss(in_precision(m.denoise, self.precision), m.values(coords, key), cond, mask,
                                   weight=m.value_mask, t=t,
                                   generator=generator, x0_loss=structure if use else None,
                                   input_perturbation=self.input_perturbation if training else 0.0,
                                   x0_loss_until=self.noise_limit)

    def energy_losses(self, labelled: dict) -> dict[str, torch.Tensor]:
        """Normalised ``energy``, ``force`` and (with labels) ``interaction`` losses of labelled frames."""
        m = self.model
        pred = m.predict_energy(labelled["coords"], create_graph=True)
        out = {"energy": ((pred["total"] - labelled["energy"]) ** 2).mean() / m.energy_std ** 2,
               "force": ((pred["forces"] - labelled["forces"]) ** 2).mean() / m.force_rms ** 2}
        has = labelled["has_interaction"]
        if bool(has.any()) and bool(m.has_interaction_stats):
            err = (pred["interaction"] - labelled["interaction"])[has]
            out["interaction"] = (err ** 2).mean() / m.interaction_scale ** 2
        return out

    def forward(self, coords, mask, t, generator=None, labelled: dict | None = None,
                before: torch.Tensor | None = None, has_before: torch.Tensor | None = None,
                lag: torch.Tensor | None = None):
        m = self.model
        out = {"diffusion": self.diffusion_loss(coords, mask, t, generator, True, before, has_before, lag)}
        out.update({f"structure_{k}": v for k, v in self.structure.items()})
        total = out["diffusion"]
        if m.energy_model is not None and labelled is not None and bool(m.has_energy_stats):
            found = self.energy_losses(labelled)
            out.update(found)
            weights = {"energy": self.energy_weight, "force": self.force_weight, "interaction": self.interaction_weight}
            total = total + sum(weights[k] * v for k, v in found.items())
        elif m.energy_model is not None:
            # keep every parameter in the graph (DDP) without changing the loss
            total = total + 0.0 * sum(p.sum() for p in m.energy_model.parameters())
        out["loss"] = total
        return out


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _rng_states() -> dict:
    """The global Python, numpy and torch random states as plain data (tensors and numbers)."""
    version, state, gauss = random.getstate()
    return {"python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
            "numpy": np.random.get_state(legacy=False), "torch": torch.get_rng_state()}


def _set_rng_states(rng: dict) -> None:
    """Restore what :func:`_rng_states` returned (read back from a checkpoint)."""
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state(to_numpy(rng["numpy"]))
    torch.set_rng_state(rng["torch"])


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _step_rng(cfg: Config, step: int, rank: int = 0) -> tuple[random.Random, torch.Generator]:
    seed = (cfg.seed * 1_000_003 + step) * 101 + rank
    return random.Random(seed), torch.Generator().manual_seed(seed)


def _batch(ds: WindowDataset, cfg: Config, rng: random.Random, rank: int, world: int) -> dict:
    """This rank's share of the global batch, drawn from the step's ``rng`` (the same on every rank)."""
    idx = [rng.randrange(len(ds)) for _ in range(cfg.optim.batch_size)]
    mine = idx[rank::world] or idx[:1]
    return collate([ds[i] for i in mine])


def _param_groups(model: HemePLM, cfg: Config) -> list[dict]:
    """The generative model's parameters, and the energy model's with their own learning rate
    (``lr_scale`` multiplies the schedule of :func:`_lr`)."""
    energy = list(model.energy_model.parameters()) if model.energy_model is not None else []
    ids = {id(p) for p in energy}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0}]
    if energy:
        groups.append({"params": energy, "lr_scale": cfg.energy.lr / cfg.optim.lr})
    return groups


def _labelled_batch(frames: LabelledFrames, cfg: Config, rng: random.Random, device) -> dict | None:
    """``energy.frames_per_step`` labelled training frames drawn with ``rng``, or None without labels."""
    if not len(frames) or not cfg.energy.enabled:
        return None
    items = [frames[rng.randrange(len(frames))] for _ in range(cfg.energy.frames_per_step)]
    return {k: v.to(device) for k, v in collate(items).items()}


def learning_rate(cfg: Config, step: int, progress: float | None = None) -> float:
    """Linear warm-up over ``optim.warmup_steps``, then cosine decay to 0.1 × ``optim.lr`` as ``progress`` goes
    from 0 to 1 (None: ``step / max_steps``)."""
    warm = min(1.0, (step + 1) / max(1, cfg.optim.warmup_steps))
    progress = min(1.0, step / max(1, cfg.max_steps) if progress is None else progress)
    return cfg.optim.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema``'s parameters toward ``model``'s by ``1 - decay``; copy its buffers."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def evaluate(objective: Objective, ds: WindowDataset, cfg: Config, device: torch.device,
             figures_dir: Path | None = None, labelled: LabelledFrames | None = None) -> tuple[dict, list[Path]]:
    """Validation losses on a fixed set of windows, tasks, noise levels and noise (comparable across steps),
    and the energy model on every labelled validation frame.

    Returns the metrics, ``val_loss`` (diffusion with the weighted structure terms), ``val_loss_<task>``,
    ``val_structure_<term>`` (ᾱ-weighted means, keys unperturbed) and, when ``labelled``
    frames exist, ``val_energy_*``, ``val_force_*`` and ``val_interaction_*`` (with their
    ``val_mean_baseline_*`` twins) from :func:`hemeplm.evaluate.evaluate_energies`, and the figures
    written to ``figures_dir`` (parity plots, histograms, heatmap, B-factor PDBs).
    """
    model = objective.model
    if len(ds) == 0:
        return {}, []
    rng = random.Random(12345)
    gen = torch.Generator().manual_seed(12345)
    out: dict[str, list[float]] = {}
    tasks = active_tasks(vars(cfg.tasks), model.token_is_ligand)
    for i in range(cfg.eval_batches):
        idx = [rng.randrange(len(ds)) for _ in range(cfg.optim.batch_size)]
        b = {k: v.to(device) for k, v in collate([ds[j] for j in idx]).items()}
        task = tasks[i % len(tasks)]
        mask = task_mask(task, cfg.data.window, model.token_is_ligand, cfg.tasks.upsample_factor,
                         history=cfg.tasks.history)
        mask = mask.expand(len(idx), -1, -1)
        t = torch.randint(0, objective.diffusion.timesteps, (len(idx),), generator=gen).to(device)
        with torch.no_grad():
            noise_gen = torch.Generator(device=device).manual_seed(1000 + i)
            loss = objective.diffusion_loss(b["coords"], mask.to(device), t, noise_gen, lag=b["lag"])
        out.setdefault("val_loss", []).append(float(loss))
        out.setdefault(f"val_loss_{task}", []).append(float(loss))
        for k, v in objective.structure.items():
            out.setdefault(f"val_structure_{k}", []).append(float(v))
    metrics = {k: float(np.mean(v)) for k, v in out.items()}
    files: list[Path] = []
    if labelled is not None and len(labelled) and bool(model.has_energy_stats) and figures_dir is not None:
        frames = collate([labelled[i] for i in range(len(labelled))])
        has = bool(frames["has_interaction"].all()) and bool(model.has_interaction_stats)
        found, files = evaluate_energies(
            label_predictor(model), frames["coords"].numpy(), frames["energy"].numpy(), frames["forces"].numpy(), model.topology(),
            figures_dir, frames["interaction"].numpy() if has else None,
            model.interaction_mean.cpu().numpy() if has else None)
        metrics.update({f"val_{k}": v for k, v in found.items()})
    return metrics, files


class _Stop:
    """SIGTERM/SIGINT flag: training saves a checkpoint and exits cleanly at the end of the step.

    A second signal acts as usual (Ctrl-C twice quits at once; the checkpoint on disk stays whole).
    """

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self._restore()

    def _restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def __exit__(self, *exc):
        self._restore()


def _diverged(what: str, step: int, batch: dict, feats: dict, cfg: Config, last_good: int, path: Path) -> HemeplmError:
    """The error that stops a diverging run: what went wrong, at which step, on which frames."""
    windows = ", ".join(f"{feats['files'][int(s)]} frames {int(f)}-{int(f) + cfg.data.span_at(int(lag)) - 1}"
                        for s, f, lag in zip(batch["segment"], batch["start"], batch["lag"]))
    return HemeplmError(f"training diverged: {what} at step {step} on windows {windows}; the last good checkpoint "
                        f"(step {last_good}) is kept; lower optim.lr or check these frames", path)


def build(cfg: Config, device: torch.device):
    """Featurise the data and build model + diffusion (normalisation fitted on training windows, energy
    statistics on labelled training frames). Returns features, train and val windows, labelled frames
    per split, the static system, model and diffusion."""
    feats = featurize(cfg.data)
    train_ds = WindowDataset(feats, cfg.data, "train", cfg.data.window - 1 if cfg.tasks.rollout > 0 else 0)
    val_ds = WindowDataset(feats, cfg.data, "val")
    labelled = {split: LabelledFrames(feats, cfg.data, split) for split in ("train", "val")}
    if len(train_ds) == 0:
        raise HemeplmError(f"no training window: {len(feats['segments'])} segment(s) too short for "
                           f"window={cfg.data.window}, lag={cfg.data.lag}", cfg.data.topology)
    if cfg.data.split[1] > 0 and len(val_ds) == 0:
        log.warning("%s: no validation window: the validation split of every segment is shorter than a window "
                    "(data.window=%d at data.lag=%d spans %d frames), so no validation loss is computed; lower "
                    "data.window or give data.split more validation", cfg.data.topology, cfg.data.window,
                    cfg.data.lag, cfg.data.window_span)
    static = system_static(feats, cfg.denoiser.pocket_radius, cfg.denoiser.domain_size)
    model = HemePLM(cfg, static)
    rng = random.Random(cfg.seed)
    sample = [train_ds[i] for i in sorted(rng.sample(range(len(train_ds)), min(256, len(train_ds))))]
    model.fit_normalisation(sample)
    frames = labelled["train"]
    model.fit_energy([frames[i] for i in sorted(rng.sample(range(len(frames)), min(256, len(frames))))])
    if cfg.energy.enabled and not bool(model.has_energy_stats):
        log.warning("the training data has no energies/forces (no %s beside the trajectories): "
                    "the energy model is not trained", "energies_forces.npz")
    elif cfg.energy.enabled and not bool(model.has_interaction_stats):
        log.warning("the training labels have no per-residue interaction energies (label the trajectories "
                    "with `hemeplm label`): only total energies and forces are learnt")
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    return feats, train_ds, val_ds, labelled, static, model.to(device), diffusion.to(device)


def train(cfg: Config, resume: bool = False, dry_run: bool = False) -> Path | None:
    """Train per ``cfg``; returns the run directory (None for a dry run).

    On the CPU, deterministic algorithms are switched on for the run (bit-identical
    resumes; CPU index_put backward accumulates in a racy order otherwise) and the
    previous setting is restored afterwards.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train(cfg, resume, dry_run)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(cfg: Config, resume: bool, dry_run: bool) -> Path | None:
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.device, local_rank)
    if world > 1:
        # finite, so that a dead rank ends the job instead of leaving the others waiting forever
        timeout = datetime.timedelta(seconds=cfg.dist_timeout_s)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / "ckpt.pt"
    if not dry_run and not resume and ckpt_path.exists():
        raise HemeplmError("a run with this name exists; pass --resume to continue it or choose another name=",
                           run_dir)
    for path in cfg.data.held_out:  # read only when testing after training: a missing replica is named now
        if not Path(path).is_file():
            raise HemeplmError("config key 'data.held_out' names this held-out replica, which is not a file", path)
    feats, train_ds, val_ds, labelled, static, model, diffusion = build(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"parameters: {n_params}")
    if dry_run:
        return None
    ema = copy.deepcopy(model).requires_grad_(False)
    if cfg.compile:
        model.denoiser.compile()
    optimizer = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step, history, wandb_id = 0, None, None
    if resume:
        ckpt = load_checkpoint(ckpt_path)  # on the CPU; load_state_dict moves tensors to the model's device
        missing = [k for k in ("optimizer", "rng") if k not in ckpt]
        if missing:
            raise HemeplmError(f"holds no {' or '.join(missing)} state to resume from", ckpt_path)
        for key, target in (("model", model), ("ema", ema), ("optimizer", optimizer)):
            load_state(target, ckpt[key], key, ckpt_path)
        step, history, wandb_id = int(ckpt["step"]), ckpt.get("metrics", []), ckpt.get("wandb_id")
        _set_rng_states(ckpt["rng"])
        if rank == 0:
            print(f"resumed {ckpt_path} at step {step}")
    objective = Objective.from_config(model, diffusion, cfg)
    runner = objective
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    logger = _Logger(cfg, run_dir, rank == 0, history, wandb_id)

    def save() -> None:
        if rank != 0:
            return
        save_checkpoint(ckpt_path, {
            "config": to_dict(cfg), "static": static, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step,
            "rng": _rng_states(),
            "metrics": logger.history, "wandb_id": logger.run_id})

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if step == 0:
            logger.log(0, *evaluate(objective, val_ds, cfg, device, run_dir / "figures" / "step_0", labelled["val"]))
            save()
    from tqdm import tqdm

    last_good = step
    with _Stop() as stop, tqdm(total=cfg.max_steps, initial=step, disable=rank != 0, desc=f"train {cfg.name}",
                               unit="step") as bar:
        while step < cfg.max_steps:
            rng, _ = _step_rng(cfg, step)
            task, mask = draw_training_mask(rng, vars(cfg.tasks), cfg.data.window, model.token_is_ligand,
                                            cfg.tasks.upsample_factor, cfg.tasks.history)
            b = {k: v.to(device) for k, v in _batch(train_ds, cfg, rng, rank, world).items()}
            _, noise_gen = _step_rng(cfg, step, rank)
            t = torch.randint(0, diffusion.timesteps, (len(b["coords"]),), generator=noise_gen).to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step) * group["lr_scale"]
            frames = _labelled_batch(labelled["train"], cfg, rng, device)
            # as in sampling, windows given all tasks.history frames continue a window before them
            later = task == "forecast" and "before" in b and bool(mask[:cfg.tasks.history].all())
            rollout = (b["before"], b["has_before"]) if later else (None, None)
            losses = runner(b["coords"], mask.expand(len(b["coords"]), -1, -1), t, noise_gen, frames, *rollout,
                            b["lag"])
            loss = losses["loss"]
            # every rank learns whether any rank diverged or was signalled, so that all act at the same step
            flags = torch.tensor([float(not torch.isfinite(loss)), float(stop.requested)], device=device)
            if world > 1:
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            diverged, stopping = bool(flags[0]), bool(flags[1])
            if diverged:
                where = f" on rank {rank} (not finite on some rank)" if world > 1 else ""
                raise _diverged(f"loss {loss.item()}{where} (task {task})", step, b, feats, cfg, last_good, ckpt_path)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = sum(nn.utils.clip_grad_norm_(g["params"], cfg.optim.grad_clip) for g in optimizer.param_groups)
            if not torch.isfinite(grad_norm):  # gradients are already reduced: every rank raises
                raise _diverged(f"gradient norm {float(grad_norm)} (task {task})", step, b, feats, cfg, last_good,
                                ckpt_path)
            optimizer.step()
            step += 1
            ema_update(ema, model, min(cfg.optim.ema_decay, (1 + step) / (10 + step)))
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                logger.log(step, {f"train_{k}": float(v.detach()) for k, v in losses.items()}
                           | {"lr": learning_rate(cfg, step - 1), "task": task})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                ema_obj = Objective.from_config(ema, diffusion, cfg)
                logger.log(step, *evaluate(ema_obj, val_ds, cfg, device, run_dir / "figures" / f"step_{step}",
                                           labelled["val"]))
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps or stopping:
                save()
                last_good = step
            if stopping:
                if rank == 0:
                    print(f"stopped by signal at step {step}; checkpoint saved; continue with --resume")
                break
    logger.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return run_dir


class _Logger:
    """metrics.jsonl + wandb (offline unless ``wandb.mode=online``); rank 0 only.

    ``history`` is the checkpoint's metrics when resuming (None for a new run): metrics.jsonl is
    rewritten to hold exactly those, so steps logged after the checkpoint, which are trained
    again, appear once. ``run_id`` is the wandb run id the checkpoint recorded; a new run gets a
    new one (name plus random hex), so a run trained again under an old name never appends to the
    old run's wandb history.
    """

    def __init__(self, cfg: Config, run_dir: Path, active: bool, history: list[dict] | None,
                 run_id: str | None = None):
        self.active, self.run_dir = active, run_dir
        self.run_id = run_id or f"{cfg.name}-{secrets.token_hex(4)}"
        self.history: list[dict] = list(history or [])
        self.wandb = None
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(record) + "\n" for record in self.history))
        os.replace(tmp, run_dir / "metrics.jsonl")
        if cfg.wandb.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.name, dir=str(run_dir), mode=cfg.wandb.mode,
                                    config=to_dict(cfg), resume=None if history is None else "allow",
                                    id=self.run_id)

    def log(self, step: int, metrics: dict, figures: list[Path] = ()) -> None:
        """Append ``metrics`` to metrics.jsonl and send them, with the PNG ``figures``, to wandb."""
        if not self.active or not metrics:
            return
        record = {"step": step, "time": time.time(),
                  **{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}}
        self.history.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            log_to_wandb(self.wandb, metrics, [f for f in figures if str(f).endswith(".png")], step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
