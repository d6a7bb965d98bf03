"""Training the molecular energy model (:mod:`hemeplm.models.molecular`) on one or more molecule data sets.

``python train.py --config configs/qm_ethanol.yaml name=NAME`` comes here when the config sets
``qm.molecule`` (:class:`~hemeplm.config.QMConfig`): one molecule, or several for one model across them
all. Each data set is its ``qm.dataset`` folder (unset: ``data/qm/MOLECULE``), made with
:func:`hemeplm.forcefield.qm.make_dataset` when it is missing. Each step draws a batch of frames of one
molecule's training block (the molecules in turn, :func:`draw_order`; :func:`batch_sizes`) and minimises

    energy_weight · MSE(E) / var(E_train) + force_weight · MSE(F) / RMS(F_train)²

with that molecule's own variance and RMS, with Adam (warm-up, then cosine decay to a tenth) and an
exponential moving average of the weights, which is what is evaluated and used. Every ``eval_every``
steps each molecule's validation block is scored (energy MAE and R², force MAE, beside predicting the
training mean); at the end the test blocks too, into ``runs/NAME/test_metrics.json`` (one entry per
molecule), with predicted-vs-true energy and force plots of each in ``runs/NAME/figures/``.
``runs/NAME/ckpt.pt`` rebuilds the model on its own (:func:`load_molecular`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hemeplm.config import Config, from_dict, save_config, to_dict
from hemeplm.data.molecules import FRAGMENT_SETS, SPLITS, MoleculeData, read_datasets, set_of
from hemeplm.device import keep_freed_memory, resolve_device
from hemeplm.errors import HemeplmError
from hemeplm.forcefield.fragmentation import make_fragment_datasets
from hemeplm.forcefield.qm import make_dataset
from hemeplm.io import atomic_write_bytes, atomic_write_text
from hemeplm.models.molecular import MolecularEnergy, predict
from hemeplm.plots import parity_plot
from hemeplm.train.checkpoint import load_checkpoint, load_state, save_checkpoint
from hemeplm.train.loop import ema_update, learning_rate

log = logging.getLogger(__name__)
KIND = "molecular"


def load_molecule_data(cfg: Config, progress: bool = True) -> list[MoleculeData]:
    """The run's data sets, one per ``qm.molecule`` (from ``qm.dataset`` or data/qm/MOLECULE; a fragment set,
    e.g. ``chignolin-fragments``, gives one per fragment), each made first when its folder holds none."""
    out = []
    for i, name in enumerate(cfg.qm.molecule):
        folder = Path(cfg.qm.dataset[i] if cfg.qm.dataset else f"data/qm/{name}")
        if not any((folder / index).exists() for index in ("dataset.json", "fragments.json")):
            log.info("%s: no data set yet; making it (hemeplm dataset --molecule %s)", folder, name)
            (make_fragment_datasets if name in FRAGMENT_SETS else make_dataset)(name, folder, progress=progress)
        for data in read_datasets(folder):
            if set_of(str(data.meta.get("molecule"))) != name:
                raise HemeplmError(f"holds {data.meta.get('molecule')!r}, not {name!r} of qm.molecule", data.folder)
            out.append(data)
    return out


def build_model(cfg: Config) -> MolecularEnergy:
    """The molecular energy model the config describes (its encoder section)."""
    e = cfg.encoder
    return MolecularEnergy(hidden=e.hidden, layers=e.layers, lmax=e.lmax, num_rbf=e.num_rbf, cutoff=e.cutoff)


def score(energy: np.ndarray, forces: np.ndarray, true_energy: np.ndarray, true_forces: np.ndarray) -> dict:
    """Energy MAE (kcal/mol) and R² (against the frames' own mean), force MAE (kcal/mol/Å) and R² (against the
    mean component), both over components."""
    def r2(pred, true):
        return 1.0 - float(((pred - true) ** 2).sum()) / max(float(((true - true.mean()) ** 2).sum()), 1e-12)

    return {"energy_mae": float(np.abs(energy - true_energy).mean()), "energy_r2": r2(energy, true_energy),
            "force_mae": float(np.abs(forces - true_forces).mean()), "force_r2": r2(forces, true_forces)}


def mean_baseline(train: dict, frames: dict) -> dict:
    """:func:`score` of predicting the training mean (energy) and mean force (per atom and component)."""
    e = np.full(len(frames["energy"]), train["energy"].mean())
    f = np.broadcast_to(train["forces"].mean(0), frames["forces"].shape)
    return score(e, f, frames["energy"], frames["forces"])


def evaluate_split(model: nn.Module, data: MoleculeData, split: str, device="cpu", figures: Path | None = None
                   ) -> dict:
    """The model's scores on one split, with ``mean_baseline_*`` twins; with ``figures``, predicted-vs-true
    plots of its energies and force components there (``MOLECULE_energy_parity.png``, ``..._force_parity.png``)."""
    train, frames = data.subset("train"), data.subset(split)
    e, f = predict(model, data.numbers, frames["positions"], device=device)
    found = score(e, f, frames["energy"], frames["forces"])
    found |= {f"mean_baseline_{k}": v for k, v in mean_baseline(train, frames).items()}
    if figures is not None:
        name, n = data.meta["molecule"], len(e)
        parity_plot(e, frames["energy"], figures / f"{name}_energy_parity.png", "energy", "kcal/mol",
                    f"{name}, {split} block ({n} frames)\nMAE {found['energy_mae']:.3f} kcal/mol, "
                    f"R² {found['energy_r2']:.3f}")
        parity_plot(f, frames["forces"], figures / f"{name}_force_parity.png", "force component", "kcal/mol/Å",
                    f"{name}, {split} block ({n} frames)\nMAE {found['force_mae']:.3f} kcal/mol/Å, "
                    f"R² {found['force_r2']:.3f}")
    return found


def thin(frames: dict, n: int) -> dict:
    """``n`` frames evenly spaced in time (all when ``n`` <= 0 or there are fewer)."""
    total = len(frames["energy"])
    if n <= 0 or n >= total:
        return frames
    idx = np.linspace(0, total - 1, n).round().astype(int)
    return {k: v[idx] for k, v in frames.items()}


def batch_sizes(cfg: Config, atoms: list[int]) -> list[int]:
    """Frames per batch of each molecule, given its number of atoms: ``optim.batch_size`` each, or with
    ``qm.batch_atoms`` > 0 as many frames as that many atoms hold (at least one), so that every step of a
    model across molecules of different sizes costs about the same."""
    if cfg.qm.batch_atoms <= 0:
        return [cfg.optim.batch_size] * len(atoms)
    return [max(1, cfg.qm.batch_atoms // n) for n in atoms]


def draw_order(weights: list[int]) -> list[int]:
    """One turn of the molecules' batches: molecule ``k`` appears ``weights[k]`` times, its appearances spread
    evenly through the turn; training step ``s`` draws from ``order[s % len(order)]``."""
    return [k for _, k in sorted(((j + 0.5) / w, k) for k, w in enumerate(weights) for j in range(w))]


def set_weights(cfg: Config, names: list[str]) -> list[int]:
    """Each data set's ``qm.draw_weights`` entry (that of its molecule; every fragment of a fragment set has its
    set's), all 1 when unset."""
    if not cfg.qm.draw_weights:
        return [1] * len(names)
    return [cfg.qm.draw_weights[cfg.qm.molecule.index(set_of(name))] for name in names]


def fit(model: nn.Module, sets: list[tuple[np.ndarray, dict]], cfg: Config, device: torch.device | str = "cpu",
        max_seconds: float | None = None, start: dict | None = None, on_step=None,
        draw_weights: list[int] | None = None) -> dict:
    """Train ``model`` (``energy_and_forces`` and ``fit_statistics``) on the training frames of one or more
    molecules, each step on a batch of one molecule (:func:`draw_order`; of :func:`batch_sizes` frames).

    Args:
        sets: per molecule, its atomic numbers (A,) and training frames: ``positions`` (F, A, 3),
            ``energy`` (F,), ``forces`` (F, A, 3).
        cfg: ``max_steps``, ``seed``, ``optim``, the ``qm`` loss weights and ``qm.batch_atoms``.
        max_seconds: also stop after this much wall time (the learning-rate schedule follows whichever
            of steps and seconds runs out first).
        start: a state to continue from (``model``, ``ema``, ``optimizer``, ``step``).
        on_step: called as ``on_step(step, ema, losses)`` after every step (``losses``: the step's loss terms, its
            learning rate and ``molecule``, the index into ``sets`` it trained on); returns True to stop.
        draw_weights: batches of each set per turn (:func:`draw_order`; :func:`set_weights`); None: one each.
    Returns:
        ``{"ema", "optimizer", "step", "seconds"}``: the averaged model and the state to save.
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    tensors = [(torch.as_tensor(numbers, device=device),
                torch.as_tensor(train["positions"], dtype=torch.float32, device=device),
                torch.as_tensor(train["energy"], dtype=torch.float64, device=device),
                torch.as_tensor(train["forces"], dtype=torch.float32, device=device)) for numbers, train in sets]
    model.to(device)
    if start is None:
        model.fit_statistics([(z, energy, forces) for z, _, energy, forces in tensors])
    scales = [(float(energy.var()) if len(energy) > 1 else 1.0, float(forces.pow(2).mean()))
              for _, _, energy, forces in tensors]
    batch = batch_sizes(cfg, [len(z) for z, *_ in tensors])
    if draw_weights is not None and len(draw_weights) != len(tensors):
        raise ValueError(f"draw_weights gives {len(draw_weights)} weights for {len(tensors)} data sets")
    order = draw_order(draw_weights or [1] * len(tensors))
    ema = copy.deepcopy(model).requires_grad_(False)
    # fused: one kernel for all parameters instead of a dozen ops each (a step of Adam 4.8 -> 1.1 ms for the
    # 67 tensors of the molecular model on one CPU thread, 5% of a small-batch training step)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    step = 0
    if start is not None:  # the caller has loaded start["model"] into ``model`` (checked, with a clear error)
        ema.load_state_dict(start["ema"])
        opt.load_state_dict(start["optimizer"])
        step = int(start["step"])
    t0 = time.perf_counter()
    while step < cfg.max_steps:
        elapsed = time.perf_counter() - t0
        if max_seconds is not None and elapsed >= max_seconds:
            break
        progress = max(step / max(1, cfg.max_steps), elapsed / max_seconds if max_seconds else 0.0)
        lr = learning_rate(cfg, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        k = order[step % len(order)]  # this step's molecule
        z, pos, energy, forces = tensors[k]
        e_var, f_ms = scales[k]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(pos), (batch[k],), generator=gen)
        idx = idx.to(device)
        e_pred, f_pred = model.energy_and_forces(z, pos[idx], create_graph=True)
        loss_e = ((e_pred.double() - energy[idx]) ** 2).mean() / e_var
        loss_f = ((f_pred - forces[idx]) ** 2).mean() / f_ms
        loss = cfg.qm.energy_weight * loss_e.float() + cfg.qm.force_weight * loss_f
        if not torch.isfinite(loss):
            raise HemeplmError(f"training diverged: loss {float(loss)} at step {step}; lower optim.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        step += 1
        ema_update(ema, model, min(cfg.optim.ema_decay, (1 + step) / (10 + step)))
        losses = {"loss": float(loss.detach()), "energy": float(loss_e.detach()), "force": float(loss_f.detach()),
                  "lr": lr, "molecule": k}
        if on_step is not None and on_step(step, ema, losses):
            break
    return {"model": model, "ema": ema, "optimizer": opt, "step": step, "seconds": time.perf_counter() - t0}


def train_molecular(cfg: Config, resume: bool = False, dry_run: bool = False, progress: bool = True) -> Path | None:
    """Train the molecular energy model per ``cfg`` (``qm.molecule`` set); returns the run folder
    (None for a dry run)."""
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    run_dir = cfg.run_dir
    ckpt_path = run_dir / "ckpt.pt"
    if not dry_run and not resume and ckpt_path.exists():
        raise HemeplmError("a run with this name exists; pass --resume to continue it or choose another name=",
                           run_dir)
    datasets = load_molecule_data(cfg, progress)
    names = [d.meta["molecule"] for d in datasets]
    sets = [(d.numbers, thin(d.subset("train"), cfg.qm.train_frames)) for d in datasets]
    model = build_model(cfg)
    batch = batch_sizes(cfg, [len(numbers) for numbers, _ in sets])
    print(f"parameters: {sum(p.numel() for p in model.parameters())}; " + "; ".join(
        f"{name}: {len(train['energy'])} training frames of {len(numbers)} atoms, batches of {b}"
        for name, (numbers, train), b in zip(names, sets, batch)))
    if dry_run:
        return None
    start, history = None, []
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("kind") != KIND:
            raise HemeplmError("is not a molecular energy model's checkpoint", ckpt_path)
        trained = upgrade_static(ckpt)["molecules"]
        if [(k, np.asarray(v).tolist()) for k, v in trained.items()] != [(k, d.numbers.tolist())
                                                                        for k, d in zip(names, datasets)]:
            raise HemeplmError(f"was trained on {', '.join(trained)}; resume it with the same qm.molecule "
                               f"(now {', '.join(names)}) and the same molecules' atoms", ckpt_path)
        load_state(model, ckpt["model"], "model", ckpt_path)
        start, history = ckpt, list(ckpt.get("metrics", []))
        print(f"resumed {ckpt_path} at step {int(ckpt['step'])}")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    static = {"molecules": {name: d.numbers for name, d in zip(names, datasets)},
              "datasets": {name: str(d.folder) for name, d in zip(names, datasets)},
              "energy_mean": {name: float(train["energy"].mean()) for name, (_, train) in zip(names, sets)}}
    bar = tqdm(total=cfg.max_steps, initial=0 if start is None else int(start["step"]), desc=f"train {cfg.name}",
               unit="step", disable=not progress)

    def scores(ema: nn.Module, split: str, figures: Path | None = None) -> dict:
        return {name: evaluate_split(ema, d, split, device, figures) for name, d in zip(names, datasets)}

    def on_step(step: int, ema: nn.Module, losses: dict) -> bool:
        bar.update(1)
        record = None
        if step % cfg.log_every == 0:  # the losses of this step's molecule, named
            record = {"step": step, **{f"train_{k}": v for k, v in losses.items()},
                      "train_molecule": names[losses["molecule"]]}
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            record = (record or {"step": step}) | {"val": scores(ema, "val")}
            bar.set_postfix(val_energy_mae=" ".join(f"{v['energy_mae']:.3f}" for v in record["val"].values()),
                            val_force_mae=" ".join(f"{v['force_mae']:.3f}" for v in record["val"].values()))
        if record is not None:
            history.append(record)
        return False

    result = fit(model, sets, cfg, device, start=start, on_step=on_step, draw_weights=set_weights(cfg, names))
    bar.close()
    save_checkpoint(ckpt_path, {"kind": KIND, "config": to_dict(cfg), "static": static, "model": model.state_dict(),
                                "ema": result["ema"].state_dict(), "optimizer": result["optimizer"].state_dict(),
                                "step": result["step"], "metrics": history})
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    test = scores(result["ema"], "test", run_dir / "figures")
    for name, d in zip(names, datasets):
        test[name]["n_test_frames"] = int((d.split == SPLITS.index("test")).sum())
    atomic_write_bytes(run_dir / "test_metrics.json", json.dumps(
        {"steps": result["step"], "train_seconds": round(result["seconds"], 1), "molecules": test}, indent=2).encode())
    for name, t in test.items():
        print(f"{name}, test block ({t['n_test_frames']} frames): energy MAE {t['energy_mae']:.3f} kcal/mol "
              f"(mean baseline {t['mean_baseline_energy_mae']:.3f}), R² {t['energy_r2']:.3f}, force MAE "
              f"{t['force_mae']:.3f} kcal/mol/Å (mean baseline {t['mean_baseline_force_mae']:.3f})")
    return run_dir


def upgrade_static(ckpt: dict) -> dict:
    """A checkpoint written before one model could learn several molecules (``static`` with ``numbers``,
    ``molecule`` and ``dataset``) in today's form, in place; returns its ``static``. (Its config's name and folder
    the config loader reads as one-element lists.)"""
    static = ckpt["static"]
    if "molecules" not in static:
        name, numbers = static["molecule"], torch.as_tensor(np.asarray(static["numbers"]), dtype=torch.long)
        mean = float(ckpt["ema"]["shift"][numbers].sum())  # its per-element zero met the one training mean
        ckpt["static"] = {"molecules": {name: static["numbers"]}, "datasets": {name: static["dataset"]},
                          "energy_mean": {name: mean}}
    return ckpt["static"]


def load_molecular(path: str | Path, device: str | torch.device = "cpu") -> tuple[MolecularEnergy, dict]:
    """Rebuild a trained molecular energy model (its averaged weights, in eval mode) from ``runs/NAME/ckpt.pt``
    alone; returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != KIND:
        raise HemeplmError("is not a molecular energy model's checkpoint (qm.molecule unset when trained)", path)
    upgrade_static(ckpt)
    cfg = from_dict(ckpt["config"])
    model = build_model(cfg)
    load_state(model, ckpt["ema"], "ema", path)
    return model.to(device).eval(), ckpt
