"""Training: data, model, diffusion objective, EMA, checkpoints, logging, DDP.

``train(cfg)`` is what ``train.py`` calls. Randomness is derived from
``(seed, step, rank)`` at every step (batch choice, task, diffusion noise), so
a resumed run continues exactly as an uninterrupted one would. Under
``torchrun`` every rank trains on its share of each global batch and rank 0
alone logs and saves.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, save_config, to_dict
from .data.dataset import WindowDataset, featurize
from .diffusion import GaussianDiffusion
from .errors import HemeplmError
from .models.hemeplm import HemePLM, system_static
from .tasks import TASKS, draw_training_mask, task_mask

log = logging.getLogger(__name__)


class Objective(nn.Module):
    """Loss of one batch: diffusion ε loss plus, when the data has them, energy and force losses.

    ``forward(coords (B, T, A, 3), energy (B, T), forces (B, T, A, 3), has_energy (B,),
    mask (B, T, N), t (B,), noise_seed)`` returns a dict of scalar losses; ``loss`` is the total.
    Energies and forces are fitted on each window's key frame (frame 0) when that frame's
    ligand is given (not in inpainting, where the encoder does not see it).
    """

    def __init__(self, model: HemePLM, diffusion: GaussianDiffusion, energy_weight: float, force_weight: float):
        super().__init__()
        self.model, self.diffusion = model, diffusion
        self.energy_weight, self.force_weight = energy_weight, force_weight

    def forward(self, coords, energy, forces, has_energy, mask, t, generator=None):
        m = self.model
        key = coords[:, 0]
        node_mask = mask[:, 0][:, m.l_atom_token]
        fit_energy = (m.energy_head is not None and bool(has_energy.all()) and bool(node_mask.all())
                      and bool(m.has_energy_stats))
        key_in = key.detach().requires_grad_(fit_energy)
        cond, h = m.condition(key_in, None if bool(node_mask.all()) else node_mask)
        x0 = m.values(coords, key)
        out = {"diffusion": self.diffusion.loss(m.denoise, x0, cond, mask, weight=m.slot_mask, t=t,
                                                generator=generator)}
        total = out["diffusion"]
        if fit_energy:
            e = m.energy_from_features(h)
            f_pred = -torch.autograd.grad(e["total"].sum(), key_in, create_graph=True)[0]
            target = (energy[:, 0] - m.energy_mean) / m.energy_std
            out["energy"] = ((e["total_normalised"] - target) ** 2).mean()
            out["force"] = ((f_pred - forces[:, 0]) ** 2).mean() / m.force_rms ** 2
            total = total + self.energy_weight * out["energy"] + self.force_weight * out["force"]
        elif m.energy_head is not None:
            # keep every parameter in the graph (DDP) without changing the loss
            total = total + 0.0 * sum(p.sum() for p in m.energy_head.parameters())
        out["loss"] = total
        return out


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _device(cfg: Config, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _step_rng(cfg: Config, step: int, rank: int = 0) -> tuple[random.Random, torch.Generator]:
    seed = (cfg.seed * 1_000_003 + step) * 101 + rank
    return random.Random(seed), torch.Generator().manual_seed(seed)


def _batch(ds: WindowDataset, cfg: Config, step: int, rank: int, world: int) -> dict:
    """This rank's share of the global batch of ``step``."""
    rng, _ = _step_rng(cfg, step)
    idx = [rng.randrange(len(ds)) for _ in range(cfg.optim.batch_size)]
    mine = idx[rank::world] or idx[:1]
    return collate([ds[i] for i in mine])


def _lr(cfg: Config, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.optim.warmup_steps))
    progress = min(1.0, step / max(1, cfg.max_steps))
    return cfg.optim.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def evaluate(objective: Objective, ds: WindowDataset, cfg: Config, device: torch.device,
             figures_dir: Path | None = None) -> tuple[dict, list[Path]]:
    """Validation losses on a fixed set of windows, tasks, noise levels and noise (comparable across steps).

    Returns the metrics, ``val_loss`` (diffusion), ``val_loss_<task>`` and, when energies exist,
    ``val_energy_*`` (kcal/mol) and ``val_force_*`` (kcal/mol/Å) from
    :func:`hemeplm.evaluate.energy_force_metrics`, and the figures written to ``figures_dir``
    (energy and force parity plots, energy histograms, B-factor PDBs).
    """
    model = objective.model
    if len(ds) == 0:
        return {}, []
    rng = random.Random(12345)
    gen = torch.Generator().manual_seed(12345)
    out: dict[str, list[float]] = {}
    tasks = [k for k in TASKS if getattr(cfg.tasks, k) > 0 and (k != "inpaint" or bool(model.token_is_ligand.any()))]
    keys, energies, forces = [], [], []
    for i in range(cfg.eval_batches):
        idx = [rng.randrange(len(ds)) for _ in range(cfg.optim.batch_size)]
        b = {k: v.to(device) for k, v in collate([ds[j] for j in idx]).items()}
        task = tasks[i % len(tasks)]
        mask = task_mask(task, cfg.data.window, model.token_is_ligand, cfg.tasks.upsample_factor)
        mask = mask.expand(len(idx), -1, -1)
        t = torch.randint(0, objective.diffusion.timesteps, (len(idx),), generator=gen).to(device)
        with torch.no_grad():
            key = b["coords"][:, 0]
            node_mask = mask[:, 0][:, model.l_atom_token]
            cond, _ = model.condition(key, None if bool(node_mask.all()) else node_mask)
            noise_gen = torch.Generator(device=device).manual_seed(1000 + i)
            loss = objective.diffusion.loss(model.denoise, model.values(b["coords"], key), cond, mask.to(device),
                                            weight=model.slot_mask, t=t, generator=noise_gen)
        out.setdefault("val_loss", []).append(float(loss))
        out.setdefault(f"val_loss_{task}", []).append(float(loss))
        if bool(b["has_energy"].all()) and model.energy_head is not None:
            keys.append(b["coords"][:, 0])
            energies.append(b["energy"][:, 0])
            forces.append(b["forces"][:, 0])
    metrics = {k: float(np.mean(v)) for k, v in out.items()}
    files: list[Path] = []
    if keys and bool(model.has_energy_stats) and figures_dir is not None:
        from .evaluate import evaluate_energies

        def predict(x: np.ndarray) -> dict:
            p = model.predict_energy(torch.as_tensor(x, device=device))
            return {"energy": p["total"], "forces": p["forces"], "residue_energy": p["residue"]}

        found, files = evaluate_energies(predict, torch.cat(keys).cpu().numpy(), torch.cat(energies).cpu().numpy(),
                                         torch.cat(forces).cpu().numpy(), model.topology(), figures_dir)
        metrics.update({f"val_{k}": v for k, v in found.items()})
    return metrics, files


class _Stop:
    """SIGTERM/SIGINT flag: training saves a checkpoint and exits cleanly at the end of the step."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def build(cfg: Config, device: torch.device):
    """Featurise the data and build model + diffusion (normalisation fitted on training windows)."""
    feats = featurize(cfg.data)
    train_ds = WindowDataset(feats, cfg.data, "train")
    val_ds = WindowDataset(feats, cfg.data, "val")
    if len(train_ds) == 0:
        raise HemeplmError(f"no training window: {len(feats['segments'])} segment(s) too short for "
                           f"window={cfg.data.window}, lag={cfg.data.lag}", cfg.data.topology)
    static = system_static(feats, cfg.denoiser.pocket_radius, cfg.denoiser.domain_size)
    model = HemePLM(cfg, static)
    rng = random.Random(cfg.seed)
    sample = [train_ds[i] for i in sorted(rng.sample(range(len(train_ds)), min(256, len(train_ds))))]
    model.fit_normalisation(sample)
    if cfg.energy.enabled and not bool(model.has_energy_stats):
        log.warning("the training data has no energies/forces (no %s beside the trajectories): "
                    "the energy head is not trained", "energies_forces.npz")
    diffusion = GaussianDiffusion(cfg.diffusion.timesteps, cfg.diffusion.schedule)
    return feats, train_ds, val_ds, static, model.to(device), diffusion.to(device)


def train(cfg: Config, resume: bool = False, dry_run: bool = False) -> Path | None:
    """Train per ``cfg``; returns the run directory (None for a dry run)."""
    rank, world, local_rank = _distributed()
    device = _device(cfg, local_rank)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / "ckpt.pt"
    if rank == 0 and not dry_run and not resume and ckpt_path.exists():
        raise HemeplmError("a run with this name exists; pass --resume to continue it or choose another name=",
                           run_dir)
    feats, train_ds, val_ds, static, model, diffusion = build(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"parameters: {n_params}")
    if dry_run:
        return None
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step, history = 0, []
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        random.setstate(ckpt["rng"]["python"])
        np.random.set_state(ckpt["rng"]["numpy"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if rank == 0:
            print(f"resumed {ckpt_path} at step {step}")
    objective = Objective(model, diffusion, cfg.energy.energy_weight, cfg.energy.force_weight)
    runner = objective
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    logger = _Logger(cfg, run_dir, rank == 0, resume)

    def save() -> None:
        if rank != 0:
            return
        save_checkpoint(ckpt_path, {
            "config": to_dict(cfg), "static": static, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            "metrics": logger.history})

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if step == 0:
            logger.log(0, *evaluate(objective, val_ds, cfg, device, run_dir / "figures" / "step_0"))
            save()
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=rank != 0, desc=f"train {cfg.name}", unit="step")
    last_good = step
    with _Stop() as stop:
        while step < cfg.max_steps:
            rng, gen = _step_rng(cfg, step)
            task, mask = draw_training_mask(rng, vars(cfg.tasks), cfg.data.window, model.token_is_ligand,
                                            cfg.tasks.upsample_factor)
            b = {k: v.to(device) for k, v in _batch(train_ds, cfg, step, rank, world).items()}
            _, noise_gen = _step_rng(cfg, step, rank)
            t = torch.randint(0, diffusion.timesteps, (len(b["coords"]),), generator=noise_gen).to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, step)
            losses = runner(b["coords"], b["energy"], b["forces"], b["has_energy"],
                            mask.expand(len(b["coords"]), -1, -1), t, noise_gen)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                sources = [f"{feats['files'][int(s)]}[{int(f)}:]" for s, f in zip(b["segment"], b["start"])]
                raise HemeplmError(f"loss became {float(loss)} at step {step} (task {task}) on windows "
                                   f"{', '.join(sources)}; the last good checkpoint (step {last_good}) is kept",
                                   ckpt_path)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            step += 1
            _ema_update(ema, model, min(cfg.optim.ema_decay, (1 + step) / (10 + step)))
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
                logger.log(step, {f"train_{k}": float(v.detach()) for k, v in losses.items()} | {"lr": _lr(cfg, step - 1),
                                                                                         "task": task})
                bar.set_postfix(loss=f"{float(loss):.3f}")
            if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                ema_obj = Objective(ema, diffusion, cfg.energy.energy_weight, cfg.energy.force_weight)
                logger.log(step, *evaluate(ema_obj, val_ds, cfg, device, run_dir / "figures" / f"step_{step}"))
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps or stop.requested:
                save()
                last_good = step
            if stop.requested:
                if rank == 0:
                    print(f"stopped by signal at step {step}; checkpoint saved; continue with --resume")
                break
    bar.close()
    logger.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return run_dir


class _Logger:
    """metrics.jsonl + wandb (offline unless ``wandb.mode=online``); rank 0 only."""

    def __init__(self, cfg: Config, run_dir: Path, active: bool, resume: bool):
        self.active, self.run_dir, self.cfg = active, run_dir, cfg
        self.history: list[dict] = []
        self.wandb = None
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if resume and path.exists():
            self.history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.exists():
            path.unlink()
        if cfg.wandb.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.name, dir=str(run_dir), mode=cfg.wandb.mode,
                                    config=to_dict(cfg), resume="allow" if resume else None,
                                    id=f"{cfg.name}-{cfg.seed}")

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
            from .evaluate import log_to_wandb

            log_to_wandb(self.wandb, metrics, [f for f in figures if str(f).endswith(".png")], step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
