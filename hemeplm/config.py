"""Configuration: one small dataclass per component, YAML layers, ``key=value`` overrides.

``load_config(path, overrides)`` starts from the defaults below, applies the
YAML file (nested mappings, e.g. ``denoiser: {depth: 4}``) and then each
``key=value`` override (dotted keys, YAML-parsed values: ``data.ligand=none``,
``denoiser.depth=8``, ``data.trajectories=[a.xtc,b.xtc]``). An unknown key is
an error that names it, and so is a value of the wrong type or out of its range
(:data:`RANGES`, :data:`CHOICES`: ``optim.batch_size=0``, ``optim.lr=-1``), on one line,
before any work. The resolved config is saved beside the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
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
    refine_steps: int = 8
    #: each token's embedding also reads the key frame's offset from the training windows' mean structure (token
    #: positions superposed on the protein), resolved along the token's own axes: what a frame 2 ps back cannot
    #: show, which part of the key is a passing fluctuation the dynamics pulls back (docs/results.md)
    ensemble_offset: bool = True


@dataclass
class DiffusionConfig:
    """DDPM noise schedule and sampler."""

    timesteps: int = 1000
    schedule: str = "cosine"
    parameterisation: str = "v"
    sampler: str = "ddim"
    #: DDIM steps per window before the restarts: 20 (40 denoiser calls with the restarts) kept the held-out
    #: fidelity of 50 (70 calls) on the demo (``tools/sampler_curve.py``; docs/results.md)
    sample_steps: int = 20
    #: sampling temperature: the sampler's starting noise (and ancestral sampling's step noise, and a restart's
    #: re-noising) is scaled by it; below 1 narrows the spread of generated frames (1: the plain sampler).
    #: ``sample.py --noise-scale``.
    noise_scale: float = 1.0
    #: Restart sampling (:meth:`~hemeplm.diffusion.GaussianDiffusion.sample`): once a window is sampled, re-noise
    #: it to the fraction ``restart`` of the diffusion steps (0.1: step 100 of 1000) and sample it back in
    #: ``restart_steps`` DDIM steps (ancestral: every step), ``restarts`` times, which takes out errors the
    #: sampler's path accumulated (docs/results.md: raw peptide bonds and torsions closer to the held-out MD, for
    #: 40% more denoiser calls). 0: off. ``sample.py --restart``.
    restart: float = 0.1
    restart_steps: int = 5
    restarts: int = 4
    #: training only: γ of input perturbation (:meth:`~hemeplm.diffusion.GaussianDiffusion.loss`), which teaches
    #: the denoiser to correct the errors a sampler's own estimates put into its inputs. 0: off.
    input_perturbation: float = 0.0

    @property
    def restart_settings(self) -> dict:
        """``restart``, ``restart_steps`` and ``restarts``: the keywords of Restart sampling
        (:meth:`~hemeplm.diffusion.GaussianDiffusion.sample`)."""
        return {"restart": self.restart, "restart_steps": self.restart_steps, "restarts": self.restarts}


@dataclass
class TaskConfig:
    """Which conditioning masks training draws, and how often."""

    forecast: float = 1.0
    tps: float = 1.0
    inpaint: float = 1.0
    upsample: float = 1.0
    upsample_factor: int = 4
    #: frames a forecast window is given (the first one only its start frame): 1 keys each window on one
    #: frame; 2-3 give the model velocities. Training draws 1..history.
    history: int = 1
    #: training only: each window's key frame, and the given frames right after it, have their tokens' rigid-body
    #: values moved by Gaussian noise of up to this many of their training standard deviations (drawn per window,
    #: uniform from 0), so the network learns to continue from imperfect frames, as a long forecast's given frames
    #: (its own output) are. 0: off.
    key_noise: float = 0.0
    #: training only: the fraction of forecast windows given all ``history`` frames (those with ``data.window`` - 1
    #: frames before them in their split) trained from the model's own given frames: the last frames of the window before, sampled by
    #: the network being trained (raw, ``rollout_steps`` DDIM steps) from the true frames before it, while the
    #: targets stay the MD's frames, as in a long forecast, whose given frames are its own output. 0: off.
    rollout: float = 0.0
    rollout_steps: int = 5


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
    estimate, and the projection of sampled windows onto them and onto planar peptide bonds (Adam steps; 0
    keeps the network's raw output). ``fold_sigmas`` > 0 turns on the fold hold (``sample.py --fold-hold``):
    the projection then also keeps the Cα-Cα distances of each window's key frame within that many
    training-MD standard deviations. Off (0) by default; a checkpoint keeps the value it was trained with."""

    #: inter-token 1-2/1-3 distances: mean squared deviation from their length (Å²)
    bond_weight: float = 1.0
    clash_weight: float = 0.1
    #: peptide bonds: ω within 10° of planar and the two angles across the bond within 4 σ (rad², mean per bond)
    peptide_weight: float = 0.0
    #: frame-aligned point error (Å, clamped at 10 Å) of every atom in sampled residue frames, AlphaFold's FAPE
    fape_weight: float = 0.0
    #: the true frame's contacts (non-bonded pairs within 5 Å): mean squared error of their distances (Å²), which
    #: holds the packing in both directions where the clash term only pushes atoms apart
    contact_weight: float = 0.0
    #: the same over the pairs with a ligand atom alone (Å²), which the mean over all pairs dilutes: it holds the
    #: ligand in its pocket (no ligand: 0)
    ligand_contact_weight: float = 0.0
    #: the terms count only on windows noised to at most this fraction of the diffusion steps (1: all). Higher,
    #: the clean estimate is a mean over many structures, and holding it to one structure's rules (no clashes
    #: above all) biases it: the samples drawn through it come out expanded, more with each forecast window
    noise_limit: float = 1.0
    project_steps: int = 50
    project_restraint: float = 0.01
    fold_sigmas: float = 0.0


@dataclass
class QMConfig:
    """A molecular energy model (:mod:`hemeplm.models.molecular`) trained on molecule data sets
    (``hemeplm dataset``) instead of the generative model: set ``molecule`` to train one, a name or a list
    of names (one model across them all, each step's batch drawn from one molecule in turn). ``dataset``
    lists their data set folders in the same order (unset: data/qm/MOLECULE each, made on the fly when
    missing); the loss is ``energy_weight`` · MSE(E)/var(E) + ``force_weight`` · MSE(F)/RMS(F)² on each
    molecule's training block, with its own variance and RMS; ``train_frames`` > 0 keeps that many training
    frames of each molecule, evenly spaced in time (0: all). A batch holds ``optim.batch_size`` frames, or
    with ``batch_atoms`` > 0 as many frames of its molecule as that many atoms hold (at least one: each step
    costs about the same across molecules of different sizes). ``draw_weights`` (whole numbers, one per
    molecule; unset: all 1) gives a molecule that many batches per turn of the molecules instead of one,
    spread evenly through the turn. The encoder section sets the network
    (``max_neighbors`` is unused: a plain radius graph), optim the optimiser."""

    molecule: list[str] = field(default_factory=list)
    dataset: list[str] = field(default_factory=list)
    energy_weight: float = 1.0
    force_weight: float = 10.0
    train_frames: int = 0
    batch_atoms: int = 0
    draw_weights: list[int] = field(default_factory=list)


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
    #: "bfloat16": training and sampling run the networks under bfloat16 autocast (a GPU's tensor cores; on a CPU
    #: without bfloat16 units it is no faster); "float32": plain
    precision: str = "float32"
    #: compile the denoiser with ``torch.compile`` (minutes of compiling on the first windows, then faster
    #: kernels on a GPU; sample.py --compile does the same for sampling)
    compile: bool = False
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


#: the range of every numeric key: (lowest, highest, is the lowest itself allowed); None: unbounded.
#: A key whose value may be None (``data.timestep_ps``) is checked only when set.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "seed": (0, None, True), "max_steps": (0, None, True), "ckpt_every": (1, None, True),
    "eval_every": (1, None, True), "eval_batches": (1, None, True), "log_every": (1, None, True),
    "dist_timeout_s": (0, None, False),
    "data.ligand_group": (1, None, True), "data.window": (2, None, True), "data.lag": (1, None, True),
    "data.stride": (1, None, True), "data.timestep_ps": (0, None, False),
    "encoder.hidden": (1, None, True), "encoder.layers": (1, None, True), "encoder.lmax": (1, None, True),
    "encoder.num_rbf": (1, None, True), "encoder.cutoff": (0, None, False), "encoder.max_neighbors": (1, None, True),
    "denoiser.dim": (1, None, True), "denoiser.depth": (1, None, True), "denoiser.heads": (1, None, True),
    "denoiser.mlp_ratio": (0, None, False), "denoiser.max_tau": (1, None, True),
    "denoiser.pocket_radius": (0, None, False), "denoiser.cross_window": (0, None, True),
    "denoiser.local_neighbors": (1, None, True), "denoiser.domain_size": (1, None, True),
    "denoiser.max_tokens": (1, None, True), "denoiser.fragment_halo": (0, None, True),
    "denoiser.refine_steps": (0, None, True),
    "diffusion.timesteps": (2, None, True), "diffusion.sample_steps": (1, None, True),
    "diffusion.noise_scale": (0, None, False), "diffusion.restart": (0, 1, True),
    "diffusion.restart_steps": (1, None, True), "diffusion.restarts": (1, None, True),
    "diffusion.input_perturbation": (0, None, True),
    "tasks.forecast": (0, None, True), "tasks.tps": (0, None, True), "tasks.inpaint": (0, None, True),
    "tasks.upsample": (0, None, True), "tasks.upsample_factor": (2, None, True), "tasks.history": (1, None, True),
    "tasks.key_noise": (0, None, True), "tasks.rollout": (0, 1, True), "tasks.rollout_steps": (1, None, True),
    "energy.hidden": (1, None, True), "energy.layers": (1, None, True), "energy.n_rbf": (1, None, True),
    "energy.cutoff": (0, None, False), "energy.energy_weight": (0, None, True), "energy.force_weight": (0, None, True),
    "energy.interaction_weight": (0, None, True), "energy.frames_per_step": (1, None, True),
    "energy.lr": (0, None, False),
    "qm.energy_weight": (0, None, True), "qm.force_weight": (0, None, True), "qm.train_frames": (0, None, True),
    "qm.batch_atoms": (0, None, True),
    "structure.bond_weight": (0, None, True), "structure.clash_weight": (0, None, True),
    "structure.noise_limit": (0, 1, True),
    "structure.project_steps": (0, None, True), "structure.project_restraint": (0, None, True),
    "structure.fold_sigmas": (0, None, True), "structure.peptide_weight": (0, None, True),
    "structure.fape_weight": (0, None, True), "structure.contact_weight": (0, None, True),
    "structure.ligand_contact_weight": (0, None, True),
    "optim.lr": (0, None, False), "optim.batch_size": (1, None, True), "optim.weight_decay": (0, None, True),
    "optim.grad_clip": (0, None, False), "optim.warmup_steps": (0, None, True), "optim.ema_decay": (0, 1, True),
}
#: the numeric precisions training and sampling run in (``precision``, ``sample.py --precision``)
PRECISIONS = ("float32", "bfloat16")
#: the values a text key takes
CHOICES: dict[str, tuple[str, ...]] = {
    "data.truncated": ("error", "warn"), "denoiser.spatial": ("full", "local"), "precision": PRECISIONS,
    "diffusion.parameterisation": ("v", "eps"), "diffusion.schedule": ("cosine", "linear"),
}


def _describe(low, high, inclusive: bool) -> str:
    if high is None:
        return f"at least {low:g}" if inclusive else f"above {low:g}"
    return f"between {low:g} and {high:g}"


def check_value(key: str, value: Any, source: str) -> None:
    """Refuse a value of ``key`` outside :data:`RANGES` or :data:`CHOICES` (not a finite number, too small,
    too large, not one of the choices), with a one-line :class:`HemeplmError` naming the key and ``source``."""
    if value is None:
        return
    if key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high, inclusive = RANGES[key]
        below = value < low if inclusive else value <= low
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise HemeplmError(f"config key {key!r} must be {_describe(low, high, inclusive)}, got {value!r}",
                               source)
    if key in CHOICES and value not in CHOICES[key]:
        raise HemeplmError(f"config key {key!r} must be one of {', '.join(CHOICES[key])}, got {value!r}", source)


def check_config(cfg: "Config", source: str) -> "Config":
    """What no single key can say: ``data.split`` (three fractions that sum to 1), ``data.held_out`` apart
    from ``data.trajectories``, ``data.lags`` whole numbers of at least 1, ``denoiser.dim``
    divisible by ``denoiser.heads``, ``qm.molecule`` without repeats, one ``qm.dataset`` folder and one
    ``qm.draw_weights`` whole number per molecule, and ``tasks.history`` below ``data.window`` (a forecast
    window must generate a frame); a one-line :class:`HemeplmError` naming the key and ``source``."""
    split = cfg.data.split
    if len(split) != 3 or any(not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 <= x <= 1
                              for x in split) or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise HemeplmError(f"config key 'data.split' must be three fractions (train, val, test) that sum to 1, "
                           f"got {split!r}", source)
    both = sorted({str(Path(t).resolve()) for t in cfg.data.trajectories}
                  & {str(Path(t).resolve()) for t in cfg.data.held_out})
    if both:
        raise HemeplmError(f"config key 'data.held_out' names a training trajectory of 'data.trajectories': "
                           f"{', '.join(both)} (a held-out replica is one the model never sees)", source)
    if cfg.denoiser.dim % cfg.denoiser.heads:
        raise HemeplmError(f"config key 'denoiser.dim' ({cfg.denoiser.dim}) must be divisible by "
                           f"'denoiser.heads' ({cfg.denoiser.heads})", source)
    if len(set(cfg.qm.molecule)) != len(cfg.qm.molecule):
        raise HemeplmError(f"config key 'qm.molecule' names a molecule twice: {cfg.qm.molecule!r}", source)
    if cfg.qm.dataset and len(cfg.qm.dataset) != len(cfg.qm.molecule):
        raise HemeplmError(f"config key 'qm.dataset' must name one folder per molecule of 'qm.molecule' "
                           f"({len(cfg.qm.molecule)}), got {len(cfg.qm.dataset)}", source)
    if cfg.qm.draw_weights and (len(cfg.qm.draw_weights) != len(cfg.qm.molecule) or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in cfg.qm.draw_weights)):
        raise HemeplmError(f"config key 'qm.draw_weights' must give one whole number of at least 1 per molecule of "
                           f"'qm.molecule' ({len(cfg.qm.molecule)}), got {cfg.qm.draw_weights!r} "
                           f"(qm.draw_weights=[] draws each molecule once a turn)", source)
    if any(isinstance(lag, bool) or not isinstance(lag, int) or lag < 1 for lag in cfg.data.lags):
        raise HemeplmError(f"config key 'data.lags' must list whole numbers of frames of at least 1, got "
                           f"{cfg.data.lags!r}", source)
    if cfg.tasks.history >= cfg.data.window:
        raise HemeplmError(f"config key 'tasks.history' ({cfg.tasks.history}) must be below 'data.window' "
                           f"({cfg.data.window}): a forecast window has to generate at least one frame", source)
    return cfg


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
    if value is None and list in expected:
        value = []  # null for a list is none (checkpoints from before qm.molecule was a list hold null)
    if float in expected and isinstance(value, (int, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML reads 1e-3 (no dot) as a string
    if list in expected and isinstance(value, str):
        value = [value]
    if not isinstance(value, expected):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
        raise HemeplmError(f"config key {full!r} expects {names}, got {value!r}", source)
    check_value(full, value, source)
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
    return check_config(cfg, "command line" if overrides else str(path))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(mapping: dict) -> Config:
    """Rebuild a Config from :func:`to_dict` output (e.g. from a checkpoint)."""
    return check_config(apply(Config(), mapping, "checkpoint"), "checkpoint")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
