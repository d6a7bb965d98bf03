"""Python API: a checkpoint as an object that takes and returns ``mdtraj.Trajectory``.

    import mdtraj, hemeplm
    model = hemeplm.load("runs/demo/ckpt.pt")
    md = mdtraj.load("data/t4l_l99a_xylene/md/traj.xtc", top="data/t4l_l99a_xylene/complex.prmtop")
    future = model.forecast(md, n_frames=20, frame=170)          # one mdtraj.Trajectory
    paths = model.transition_path(md, md, n_frames=30, start_frame=170, end_frame=199, n_samples=4)

A checkpoint models the one system it was trained on: the given trajectories must hold that
system (water, ions and, unless the model was trained with them, hydrogens are dropped as in
training). Outputs hold the model's atoms in the given trajectory's topology (its residue numbers
and chain IDs), coordinates in nm superposed on the protein Cα of the given trajectory's first frame,
and times in ps as ``sample.py`` writes them: the given trajectory's frame i is at i times its frame
spacing (the time since its first frame), and generated frame k at the start frame's time plus k
times the generated spacing (:func:`hemeplm.generate.sampler.generate`; the model's
:attr:`Model.timestep_ps`, a transition path within one trajectory its real spacing).

Everything runs through :func:`hemeplm.generate.sampler.generate`, the task dispatch of ``sample.py``,
on the trajectories in memory (no file is written), with the same checks of every value. Frame
indices may be negative, counting from the end as in Python. With ``confidence=True`` every
returned trajectory carries ``uncertainty_A``, (F,) per-frame uncertainty in Å
(:mod:`hemeplm.generate.confidence`; it costs up to a few times the sampling).
"""

from __future__ import annotations

from pathlib import Path

from hemeplm.errors import HemeplmError
from hemeplm.generate.sampler import Generated, Sampler, generate, given_from_trajectories


def load(ckpt: str | Path, device: str = "auto", sampler: str | None = None, steps: int | None = None,
         project_steps: int | None = None, fold_hold: float | None = None, progress: bool = False,
         noise_scale: float | None = None, restart: float | None = None, lag_ps: float | None = None,
         precision: str | None = None, compile: bool = False) -> "Model":
    """Load a checkpoint (:meth:`Sampler.from_checkpoint`; None: the checkpoint's settings). ``project_steps`` 0
    returns the network's raw output; ``fold_hold`` as ``sample.py --fold-hold`` (0: off); ``noise_scale`` as
    ``sample.py --noise-scale``; ``restart`` as ``sample.py --restart``; ``lag_ps``, ``precision`` and ``compile``
    as ``--lag-ps``, ``--precision`` and ``--compile``."""
    return Model(Sampler.from_checkpoint(ckpt, device=device, steps=steps, sampler=sampler, progress=progress,
                                         project_steps=project_steps, fold_sigmas=fold_hold, noise_scale=noise_scale,
                                         restart=restart, lag_ps=lag_ps, precision=precision, compile=compile))


def _python_index(index: int, n: int, what: str) -> int:
    """A Python index (negative: from the end) of one of ``n`` frames as a frame number from 0."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise HemeplmError(f"{what} must be an integer frame index, got {index!r}")
    if not -n <= index < n:
        raise HemeplmError(f"{what} {index} is out of range (the trajectory has {n} frames)")
    return index % n


class Model:
    """A trained model of one system. Every method takes ``seed`` (the same seed, the same output),
    ``n_samples`` (None gives one ``mdtraj.Trajectory``, an integer a list of that many, one batch)
    and ``confidence`` (see the module docstring)."""

    def __init__(self, generator: Sampler):
        self.generator = generator

    @property
    def topology(self):
        """mdtraj Topology of the generated atoms, as the checkpoint's training topology numbers them."""
        return self.generator.model.topology()

    @property
    def timestep_ps(self) -> float:
        """Time between generated frames (ps): ``data.lag`` times the training data's frame spacing."""
        return self.generator.frame_ps

    def _run(self, task: str, trajs: list, n_samples: int | None, confidence: bool, **kw):
        given = given_from_trajectories(self.generator, trajs)
        made = generate(self.generator, task, given[0], given[1] if len(given) > 1 else None,
                        num_samples=1 if n_samples is None else n_samples, confidence=confidence, **kw)
        return self._out(made, given[0].topology, n_samples)

    @staticmethod
    def _out(made: Generated, topology, n_samples: int | None):
        """(S, F, A, 3) Å -> mdtraj Trajectories in nm at :func:`generate`'s times."""
        import mdtraj

        xyz = made.coords.cpu().numpy() / 10.0
        out = [mdtraj.Trajectory(x, topology, time=made.time_ps) for x in xyz]
        if made.uncertainty is not None:
            for traj, u in zip(out, made.uncertainty.cpu().numpy()):
                traj.uncertainty_A = u
        return out[0] if n_samples is None else out

    def forecast(self, traj, n_frames: int, frame: int = 0, seed: int = 0, n_samples: int | None = None,
                 confidence: bool = False):
        """``n_frames`` frames from ``traj[frame]`` on (frame 0 is that frame)."""
        return self._run("forecast", [traj], n_samples, confidence, start=_python_index(frame, traj.n_frames, "frame"),
                         num_frames=n_frames, seed=seed)

    def transition_path(self, start, end, n_frames: int, start_frame: int = 0, end_frame: int = -1, seed: int = 0,
                        n_samples: int | None = None, confidence: bool = False):
        """``n_frames`` frames from ``start[start_frame]`` to ``end[end_frame]`` (both kept exactly); ``end``
        may be ``start`` itself (the path then has the real time between its end frames)."""
        trajs = [start] if end is start else [start, end]
        return self._run("tps", trajs, n_samples, confidence,
                         start=_python_index(start_frame, start.n_frames, "start_frame"),
                         end=_python_index(end_frame, end.n_frames, "end_frame"), num_frames=n_frames, seed=seed)

    def inpaint(self, traj, atoms: str | None = None, seed: int = 0, n_samples: int | None = None,
                confidence: bool = False):
        """The ligand (or the ligand tokens holding the mdtraj selection ``atoms``) generated into the
        frames of ``traj``, read at the model's frame spacing; the protein is the given one."""
        return self._run("inpaint", [traj], n_samples, confidence, inpaint_atoms=atoms, seed=seed)

    def upsample(self, traj, seed: int = 0, n_samples: int | None = None, confidence: bool = False):
        """A trajectory ``tasks.upsample_factor`` times finer whose every k-th frame is one of ``traj``'s,
        read at k times the model's frame spacing."""
        return self._run("upsample", [traj], n_samples, confidence, seed=seed)
