"""Python API: a checkpoint as an object that takes and returns ``mdtraj.Trajectory``.

    import mdtraj, hemeplm
    model = hemeplm.load("runs/demo/ckpt.pt")
    md = mdtraj.load("data/t4l_l99a_xylene/md/traj.xtc", top="data/t4l_l99a_xylene/complex.prmtop")
    future = model.forecast(md, n_frames=20, frame=170)          # one mdtraj.Trajectory
    paths = model.transition_path(md, md, n_frames=30, start_frame=170, end_frame=199, n_samples=4)

A checkpoint models the one system it was trained on: the given trajectories must hold that
system (water, ions and, unless the model was trained with them, hydrogens are dropped as in
training). Outputs hold the model's atoms (:attr:`Model.topology`, the input's residue numbering),
coordinates in nm superposed on the protein Cα of the first given frame, and times in ps at the
model's frame spacing (:attr:`Model.timestep_ps`) from the first given frame's time.
Everything runs through :class:`hemeplm.generate.sampler.Generator`, as ``sample.py`` does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from hemeplm.generate.sampler import Sampler, given_stride, inpaint_tokens, load_frames


def load(ckpt: str | Path, device: str = "auto", sampler: str | None = None, steps: int | None = None,
         project_steps: int | None = None, progress: bool = False) -> "Model":
    """Load a checkpoint (:meth:`Sampler.from_checkpoint`; None: the checkpoint's settings)."""
    return Model(Sampler.from_checkpoint(ckpt, device=device, steps=steps, sampler=sampler, progress=progress,
                                           project_steps=project_steps))


class Model:
    """A trained model of one system. Every method takes ``seed`` (the same seed, the same output) and
    ``n_samples``: None gives one ``mdtraj.Trajectory``, an integer a list of that many (one batch)."""

    def __init__(self, generator: Sampler):
        self.generator = generator

    @property
    def topology(self):
        """mdtraj Topology of the generated atoms."""
        return self.generator.model.topology()

    @property
    def timestep_ps(self) -> float:
        """Time between generated frames (ps): ``data.lag`` times the training data's frame spacing."""
        return self.generator.frame_ps

    def _frames(self, *trajs) -> tuple[list[torch.Tensor], float]:
        """Each trajectory's frames as the model sees them ((F_i, A, 3) Å, all superposed on the first
        trajectory's first frame) and the first one's frame spacing (ps)."""
        with tempfile.TemporaryDirectory() as tmp:
            files = [Path(tmp) / f"given_{i}.h5" for i in range(len(trajs))]
            for traj, path in zip(trajs, files):
                traj.save_hdf5(str(path))
            return load_frames(self.generator, files[0], files)

    def _out(self, coords: torch.Tensor, t0: float, n_samples: int | None):
        """(S, F, A, 3) Å -> mdtraj Trajectories in nm, times ``t0`` + i · :attr:`timestep_ps`."""
        import mdtraj

        xyz = coords.cpu().numpy() / 10.0
        time = t0 + np.arange(xyz.shape[1]) * self.timestep_ps
        out = [mdtraj.Trajectory(x, self.topology, time=time) for x in xyz]
        return out[0] if n_samples is None else out

    def forecast(self, traj, n_frames: int, frame: int = 0, seed: int = 0, n_samples: int | None = None):
        """``n_frames`` frames from ``traj[frame]`` on (frame 0 is that frame)."""
        [frames], _ = self._frames(traj[frame])
        out = self.generator.forecast(frames[0], n_frames, n_samples or 1, torch.Generator().manual_seed(seed))
        return self._out(out, float(traj.time[frame]), n_samples)

    def transition_path(self, start, end, n_frames: int, start_frame: int = 0, end_frame: int = -1, seed: int = 0,
                        n_samples: int | None = None):
        """``n_frames`` frames from ``start[start_frame]`` to ``end[end_frame]`` (both kept exactly)."""
        (first,), (last,) = self._frames(start[start_frame], end[end_frame])[0]
        out = self.generator.tps(first, last, n_frames, n_samples or 1, torch.Generator().manual_seed(seed))
        return self._out(out, float(start.time[start_frame]), n_samples)

    def inpaint(self, traj, atoms: str | None = None, seed: int = 0, n_samples: int | None = None):
        """The ligand (or the ligand tokens holding the mdtraj selection ``atoms``) generated into the
        frames of ``traj``, read at the model's frame spacing; the protein is the given one."""
        [frames], dt = self._frames(traj)
        stride = given_stride(self.generator, "inpaint", dt, "the given trajectory", len(frames))
        tokens, _ = inpaint_tokens(self.generator, "the given trajectory", atoms)
        out = self.generator.inpaint(frames[::stride], n_samples or 1, torch.Generator().manual_seed(seed), tokens)
        return self._out(out, float(traj.time[0]), n_samples)

    def upsample(self, traj, seed: int = 0, n_samples: int | None = None):
        """A trajectory ``tasks.upsample_factor`` times finer whose every k-th frame is one of ``traj``'s,
        read at k times the model's frame spacing."""
        [frames], dt = self._frames(traj)
        stride = given_stride(self.generator, "upsample", dt, "the given trajectory", len(frames))
        out = self.generator.upsample(frames[::stride], n_samples or 1, torch.Generator().manual_seed(seed))
        return self._out(out, float(traj.time[0]), n_samples)
