"""Configuration: one small dataclass per component, YAML layers, ``key=value`` overrides.

``load_config(path, overrides)`` starts from the defaults below, applies the
YAML file (nested mappings, e.g. ``denoiser: {depth: 4}``) and then each
``key=value`` override (dotted keys, YAML-parsed values: ``data.ligand=none``,
``denoiser.depth=8``, ``data.trajectories=[a.xtc,b.xtc]``). An unknown key is
an error that names it. The resolved config is saved beside the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hemeplm.data.dataset import DataConfig
from hemeplm.errors import HemeplmError


@dataclass
class EncoderConfig:
    """ViSNet-style atom encoder on the key frame."""

    hidden: int = 64
    layers: int = 3
    lmax: int = 1
    num_rbf: int = 32
    cutoff: float = 5.0
    max_neighbors: int = 24


@dataclass
class DenoiserConfig:
    """Video transformer over (frame, token)."""

    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    max_tau: int = 32
    pocket_radius: float = 8.0
    cross_window: int = 2
    spatial: str = "full"
    local_neighbors: int = 32
    domain_size: int = 24
    max_tokens: int | None = None
    fragment_halo: float = 12.0


@dataclass
class DiffusionConfig:
    """DDPM noise schedule and sampler."""

    timesteps: int = 1000
    schedule: str = "cosine"
    parameterisation: str = "v"
    sampler: str = "ddim"
    sample_steps: int = 50


@dataclass
class TaskConfig:
    """Which conditioning masks training draws, and how often."""

    forecast: float = 1.0
    tps: float = 1.0
    inpaint: float = 1.0
    upsample: float = 1.0
    upsample_factor: int = 4


@dataclass
class EnergyConfig:
    """The energy model (:mod:`hemeplm.models.energy`): its size, smooth cutoff (Å), loss weights
    (total energy, forces, per-residue interaction energies, each on a normalised scale), labelled
    frames per training step and learning rate (its own; per-atom parameters learn faster). The total
    energy's weight is low: heavy atoms cannot see most of its fluctuation (solvation, hydrogens)."""

    enabled: bool = True
    hidden: int = 32
    layers: int = 1
    n_rbf: int = 16
    cutoff: float = 4.5
    energy_weight: float = 0.1
    force_weight: float = 1.0
    interaction_weight: float = 1.0
    frames_per_step: int = 2
    lr: float = 1e-2


@dataclass
class StructureConfig:
    """Structure terms (:mod:`hemeplm.geometry.structure`): their weights in training, on the decoded clean-data
    estimate, and the projection of sampled windows onto them (Adam steps; 0 turns it off); a forecast's
    projection also keeps Cα-Cα distances of its start frame within ``fold_sigmas`` training-MD standard
    deviations (0 turns that off)."""

    bond_weight: float = 1.0
    clash_weight: float = 0.1
    project_steps: int = 50
    project_restraint: float = 0.01
    fold_sigmas: float = 3.0


@dataclass
class QMConfig:
    """A molecular energy model (:mod:`hemeplm.models.molecular`) trained on a molecule data set
    (``hemeplm dataset``) instead of the generative model: set ``molecule`` to train one. ``dataset``
    is the data set folder (unset: data/qm/MOLECULE, made on the fly when missing); the loss is
    ``energy_weight`` · MSE(E)/var(E) + ``force_weight`` · MSE(F)/RMS(F)² on the training block;
    ``train_frames`` > 0 keeps that many training frames, evenly spaced in time (0: all). The encoder
    section sets the network (``max_neighbors`` is unused: a plain radius graph), optim the optimiser."""

    molecule: str | None = None
    dataset: str | None = None
    energy_weight: float = 1.0
    force_weight: float = 10.0
    train_frames: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    batch_size: int = 8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    ema_decay: float = 0.999


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "hemeplm"


@dataclass
class Config:
    name: str = "demo"
    seed: int = 0
    max_steps: int = 1000
    ckpt_every: int = 200
    eval_every: int = 200
    eval_batches: int = 8
    log_every: int = 10
    device: str = "auto"
    dist_timeout_s: float = 600.0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    qm: QMConfig = field(default_factory=QMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _field_types(obj: Any, name: str) -> tuple[type, ...]:
    """The types field ``name`` of dataclass ``obj`` admits, from its annotation: ``float | None`` gives
    (float, NoneType), ``list[str]`` gives (list,)."""
    hint = typing.get_type_hints(type(obj))[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return tuple(typing.get_origin(t) or t for t in (typing.get_args(hint) if union else (hint,)))


def _set(obj: Any, dotted: str, value: Any, source: str, prefix: str = "") -> None:
    """Set ``prefix + dotted`` (relative to ``obj``); errors name the full key."""
    full = prefix + dotted
    *parents, last = dotted.split(".")
    for p in parents:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise HemeplmError(f"unknown config key {full!r}", source)
        obj = getattr(obj, p)
    names = {f.name for f in dataclasses.fields(obj)}
    if last not in names:
        raise HemeplmError(f"unknown config key {full!r} (known here: {', '.join(sorted(names))})", source)
    current = getattr(obj, last)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise HemeplmError(f"config key {full!r} is a section; give a mapping", source)
        for k, v in value.items():
            _set(current, k, v, source, f"{full}.")
        return
    if isinstance(value, str) and value.strip().lower() in ("null", "~"):
        value = None
    expected = _field_types(obj, last)
    if float in expected and isinstance(value, (int, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML reads 1e-3 (no dot) as a string
    if list in expected and isinstance(value, str):
        value = [value]
    if not isinstance(value, expected):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
        raise HemeplmError(f"config key {full!r} expects {names}, got {value!r}", source)
    setattr(obj, last, value)


def apply(cfg: Config, mapping: dict, source: str) -> Config:
    """Apply a nested mapping onto ``cfg`` (unknown keys are errors)."""
    for k, v in (mapping or {}).items():
        _set(cfg, k, v, source)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)`` with the value parsed as YAML."""
    if "=" not in item:
        raise HemeplmError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise HemeplmError("config file not found", p)
        try:
            mapping = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise HemeplmError(f"invalid YAML: {exc}", p) from exc
        if not isinstance(mapping, dict):
            raise HemeplmError("a config file must be a mapping", p)
        apply(cfg, mapping, str(p))
    for item in overrides:
        key, value = parse_override(item)
        _set(cfg, key, value, "command line")
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(mapping: dict) -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. from a checkpoint)."""
    return apply(Config(), mapping, "checkpoint")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
