"""Generate trajectories from a checkpoint: forecast, transition paths, inpainting, upsampling.

Every task fills a *timeline* of frames in which some (frame, token) entries
are known. Windows of the model's ``T`` frames are placed on the timeline; each
is generated conditioned on what is known inside it (frame 0's protein is
always known and is the window's key frame), then its frames become known:

* forecast: windows start at the last generated frame (T-1 new frames each);
* upsample: the coarse frames sit every ``upsample_factor`` frames; windows
  tile the timeline;
* inpaint: the protein is known everywhere; windows overlap by one frame so
  each continues the ligand of the previous one;
* tps: a path of T frames between the two end frames, then, coarse to fine,
  each gap between consecutive frames is filled by another T-frame path (all
  gaps of a level in one batch), until the path has at least ``num_frames``
  frames; it is then resampled to ``num_frames`` evenly spaced frames.

All samples of a call run as one batch through the denoiser.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import build_model, load_checkpoint
from .config import Config
from .data.load import load_system
from .diffusion import GaussianDiffusion
from .errors import HemeplmError
from .models.hemeplm import HemePLM
from .tasks import task_mask


@dataclass
class Generator:
    """A model, its diffusion and sampler settings.

    Args:
        model: HemePLM in eval mode; diffusion: its GaussianDiffusion; cfg: its Config.
        steps: DDIM steps; sampler: ``ddim`` or ``ancestral``.
    """

    model: HemePLM
    diffusion: GaussianDiffusion
    cfg: Config
    steps: int = 50
    sampler: str = "ddim"
    progress: bool = False

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", steps: int | None = None, **kw) -> "Generator":
        """Load ``path``; ``steps`` None means the checkpoint's ``diffusion.sample_steps``."""
        ckpt = load_checkpoint(path, map_location=device)
        model, cfg = build_model(ckpt)
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        steps = cfg.diffusion.sample_steps if steps is None else steps
        return cls(model.to(device), diffusion.to(device), cfg, steps=steps, **kw)

    @property
    def window(self) -> int:
        return self.cfg.data.window

    @torch.no_grad()
    def window_sample(self, coords: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
                      hold: torch.Tensor | None = None) -> torch.Tensor:
        """Generate one window per sample.

        Args:
            coords: (S, T, A, 3) Å, known entries filled (others ignored).
            mask: (T, N) or (S, T, N) bool, True = known.
            hold: (A,) bool or None: atoms known in every frame although their token is
                generated (part of a ligand group); the rest of the token is generated around them.
        Returns:
            (S, T, A, 3); known and held atoms are returned exactly.
        """
        m = self.model
        s = coords.shape[0]
        mask = mask.expand(s, *mask.shape[-2:]).to(coords.device)
        key = coords[:, 0]
        atom_known = mask[:, :, m.l_atom_token]  # (S, T, A)
        slots = None
        if hold is not None:
            hold = hold.to(coords.device)
            atom_known = atom_known | hold
            slots = (hold[m.l_atom_index.clamp(min=0)] & (m.l_atom_index >= 0)).repeat_interleave(3, dim=-1)
        node_mask = atom_known[:, 0]
        cond, _ = m.condition(key, None if bool(node_mask.all()) else node_mask)
        x_given = m.values(coords, key)
        from .fragment import denoiser_for  # whole system, or overlapping fragments above the token budget

        x = self.diffusion.sample(denoiser_for(m, cond, key), x_given, cond, mask, steps=self.steps,
                                  sampler=self.sampler, generator=generator, progress=self.progress,
                                  clip_x0=float(m.value_limit), hold=slots)
        out = m.coordinates(x, key)
        return torch.where(atom_known[..., None], coords, out)

    def fill(self, coords: torch.Tensor, known: torch.Tensor, starts: list[int], generator: torch.Generator,
             desc: str = "windows", hold: torch.Tensor | None = None) -> torch.Tensor:
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
            out = self.window_sample(coords[:, s:s + t], known[s:s + t], generator, hold)
            coords[:, s:s + t] = out
            known[s:s + t] = True
        return coords

    def _timeline(self, n_samples: int, n_frames: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Empty (S, F', A, 3) coordinates and (F', N) known mask covering ``n_frames`` frames with
        windows that overlap by one frame, and the windows' start frames (F' >= n_frames)."""
        t = self.window
        starts = list(range(0, max(1, n_frames - 1), t - 1))
        total = starts[-1] + t
        coords = torch.zeros(n_samples, total, self.model.n_atoms, 3, device=device)
        known = torch.zeros(total, self.model.l_kind.numel(), dtype=torch.bool, device=device)
        return coords, known, starts

    def forecast(self, start: torch.Tensor, num_frames: int, n_samples: int, generator) -> torch.Tensor:
        """start (A, 3) -> (S, num_frames, A, 3); frame 0 is ``start``."""
        coords, known, starts = self._timeline(n_samples, num_frames, start.device)
        coords[:, 0] = start
        known[0] = True
        return self.fill(coords, known, starts, generator, "forecast windows")[:, :num_frames]

    def upsample(self, coarse: torch.Tensor, n_samples: int, generator) -> torch.Tensor:
        """coarse (Fc, A, 3) -> (S, (Fc-1)*k+1, A, 3) with the coarse frames every k-th frame."""
        k = self.cfg.tasks.upsample_factor
        n = (coarse.shape[0] - 1) * k + 1
        coords, known, starts = self._timeline(n_samples, n, coarse.device)
        coords[:, :n:k] = coarse
        known[:n:k] = True
        return self.fill(coords, known, starts, generator, "upsample windows")[:, :n]

    def inpaint(self, frames: torch.Tensor, n_samples: int, generator, atoms: torch.Tensor | None = None) -> torch.Tensor:
        """frames (F, A, 3), protein known -> (S, F, A, 3) with ligand ``atoms`` (A,) bool (default: all) generated.

        A ligand token only some of whose atoms are chosen is generated around the others,
        which are held at their given positions.
        """
        m = self.model
        hidden = m.token_is_ligand
        hold = None
        if atoms is not None:
            atoms = atoms.to(frames.device)
            hidden = torch.zeros_like(hidden).index_fill_(0, m.l_atom_token[atoms], True) & hidden
            hold = hidden[m.l_atom_token] & ~atoms
        n = frames.shape[0]
        coords, known, starts = self._timeline(n_samples, n, frames.device)
        coords[:, :n] = frames
        known[:] = ~hidden
        coords[:, n:] = frames[-1]  # padding frames: protein held at the last frame
        out = self.fill(coords, known, starts, generator, "inpaint windows", hold)
        return out[:, :n]

    def tps(self, start: torch.Tensor, end: torch.Tensor, num_frames: int, n_samples: int, generator) -> torch.Tensor:
        """start, end (A, 3) -> (S, num_frames, A, 3) path from ``start`` to ``end`` (both exact)."""
        t = self.window
        mask = task_mask("tps", t, self.model.token_is_ligand)
        path = torch.stack([start, end])[None].expand(n_samples, -1, -1, -1)
        while True:
            pairs = path.shape[1] - 1
            win = torch.zeros(n_samples * pairs, t, *start.shape, device=start.device)
            win[:, 0] = path[:, :-1].reshape(-1, *start.shape)
            win[:, -1] = path[:, 1:].reshape(-1, *start.shape)
            filled = self.window_sample(win, mask, generator).view(n_samples, pairs, t, *start.shape)
            path = torch.cat([filled[:, :, :-1].reshape(n_samples, pairs * (t - 1), *start.shape), path[:, -1:]], 1)
            if path.shape[1] >= num_frames:
                break
        idx = torch.linspace(0, path.shape[1] - 1, num_frames).round().long()
        return path[:, idx]


def load_frames(gen: Generator, topology: str | Path, files: list[str | Path]) -> tuple[list[torch.Tensor], float]:
    """Frames of ``files`` (superposed together), checked against the checkpoint's system.

    Returns:
        one (F_i, A, 3) tensor in Å per file, and the time between frames (ps).
    """
    cfg = gen.cfg.data
    system = load_system(topology, files, ligand=cfg.ligand, hydrogens=cfg.hydrogens, truncated=cfg.truncated)
    info = gen.model.static_info
    names = [a.name for a in system.topology.atoms]
    resnames = [a.residue.name for a in system.topology.atoms]
    if system.n_atoms != info["n_atoms"] or names != info["atom_names"] or resnames != info["residue_names"]:
        raise HemeplmError(f"its kept atoms ({system.n_atoms}) do not match the checkpoint's system "
                           f"({info['n_atoms']} atoms, same names and order expected)", topology)
    return [torch.from_numpy(s) for s in system.segments], system.timestep_ps


def _pick(frames: torch.Tensor, index: int | None, path, what: str) -> torch.Tensor:
    n = frames.shape[0]
    if index is None:
        index = 0
    if not -n <= index < n:
        raise HemeplmError(f"{what} frame {index} is out of range (the file has {n} frames)", path)
    return frames[index]


def output_paths(out: str | Path, n_samples: int) -> tuple[list[Path], Path, Path]:
    """Trajectory files (one per sample), topology PDB and JSON summary for ``out``."""
    out = Path(out)
    stem = out.with_suffix("")
    trajs = [out] if n_samples == 1 else [Path(f"{stem}_{i:03d}{out.suffix}") for i in range(n_samples)]
    return trajs, Path(f"{stem}.pdb"), Path(f"{stem}.json")


def run_task(gen: Generator, task: str, topology, frames_file, out, start: int | None = None, end: int | None = None,
             end_file=None, num_frames: int | None = None, num_samples: int = 1, seed: int = 0,
             inpaint_atoms: str | None = None, force: bool = False) -> dict:
    """Everything ``sample.py`` does; returns the JSON summary (also written beside the output)."""
    import mdtraj

    out = Path(out)
    if out.suffix.lower() not in (".xtc", ".dcd"):
        raise HemeplmError("output must end in .xtc or .dcd", out)
    trajs, pdb_path, json_path = output_paths(out, num_samples)
    existing = [str(p) for p in [*trajs, pdb_path, json_path] if p.exists()]
    if existing and not force:
        raise HemeplmError(f"would overwrite {', '.join(existing)}; pass --force to replace them", out)
    if task == "tps" and end is None and end_file is None:
        raise HemeplmError("--task tps needs an end frame (--end J, and --end-frames FILE if it is in another file)")
    files = [frames_file] + ([end_file] if task == "tps" and end_file is not None else [])
    segs, dt = load_frames(gen, topology, files)
    frames = segs[0]
    generator = torch.Generator().manual_seed(seed)
    t0 = time.time()
    timestep = gen.cfg.data.lag * gen.model.static_info["timestep_ps"]  # between the model's frames
    if task == "forecast":
        result = gen.forecast(_pick(frames, start, frames_file, "start"), num_frames or gen.window, num_samples, generator)
    elif task == "tps":
        end_frames, end_path = (segs[1], end_file) if end_file is not None else (frames, frames_file)
        result = gen.tps(_pick(frames, start, frames_file, "start"), _pick(end_frames, -1 if end is None else end,
                                                                            end_path, "end"),
                         num_frames or gen.window, num_samples, generator)
    elif task in ("inpaint", "upsample"):
        lo = 0 if start is None else start
        hi = frames.shape[0] if end is None else end + 1
        if not (0 <= lo < hi <= frames.shape[0]):
            raise HemeplmError(f"frame range {lo}..{hi - 1} is out of range (the file has {frames.shape[0]} frames)",
                               frames_file)
        given = frames[lo:hi]
        if task == "inpaint":
            result = gen.inpaint(given, num_samples, generator, _inpaint_atoms(gen, topology, inpaint_atoms))
            timestep = dt  # the given frames, ligand replaced
        else:
            result = gen.upsample(given, num_samples, generator)
            timestep = dt / gen.cfg.tasks.upsample_factor
    else:
        raise HemeplmError(f"unknown task {task!r}")
    elapsed = time.time() - t0
    top = gen.model.topology()
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = result.cpu().numpy() / 10.0
    for path, xyz in zip(trajs, arr):
        traj = mdtraj.Trajectory(xyz, top, time=np.arange(len(xyz)) * timestep)
        traj.save(str(path), force_overwrite=True)
    mdtraj.Trajectory(arr[0][:1], top).save_pdb(str(pdb_path), force_overwrite=True)
    summary = {"task": task, "topology": str(topology), "frames": str(frames_file), "start": start, "end": end,
               "num_frames": int(result.shape[1]), "num_samples": num_samples, "seed": seed,
               "sampler": gen.sampler, "steps": gen.steps, "timestep_ps": timestep,
               "trajectories": [str(p) for p in trajs], "topology_pdb": str(pdb_path),
               "wall_seconds": round(elapsed, 3), "inpaint_atoms": inpaint_atoms}
    json_path.write_text(json.dumps(summary, indent=2))
    return summary


def _inpaint_atoms(gen: Generator, topology, selection: str | None) -> torch.Tensor | None:
    """(A,) bool: the ligand atoms matched by ``selection`` (mdtraj syntax), or None for the whole ligand."""
    if selection is None:
        return None

    top = gen.model.topology()
    try:
        atoms = top.select(selection)
    except Exception as exc:
        raise HemeplmError(f"invalid --inpaint-atoms selection {selection!r}: {exc}", topology) from exc
    m = gen.model
    chosen = torch.zeros(m.n_atoms, dtype=torch.bool)
    chosen[torch.as_tensor(atoms, dtype=torch.long)] = True
    chosen &= m.s_is_ligand
    if not chosen.any():
        raise HemeplmError(f"--inpaint-atoms {selection!r} matches no ligand atom", topology)
    return chosen