"""HemePLM-Diffuse: a generative surrogate of protein–ligand molecular dynamics.

``hemeplm.load(ckpt)`` returns a :class:`hemeplm.generate.api.Model` that forecasts, samples transition
paths and inpaints ``mdtraj.Trajectory`` objects (:mod:`hemeplm.generate.api`); it is imported on first
use, so that ``import hemeplm`` stays light.
"""

from importlib import metadata

try:
    __version__ = metadata.version("hemeplm")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["Model", "load", "__version__"]


def __getattr__(name: str):
    if name in ("Model", "load"):
        from hemeplm.generate import api  # deferred: `import hemeplm` stays light (no torch)

        return getattr(api, name)
    raise AttributeError(f"module 'hemeplm' has no attribute {name!r}")
