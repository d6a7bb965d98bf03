"""Which device a run uses, whether its neighbour search works there, and the precision it runs in.

The atom graph (:mod:`hemeplm.models.graph`), the structure terms (:mod:`hemeplm.geometry.structure`) and local
attention search neighbours with ``torch_cluster``, whose wheels and source builds often lack
CUDA kernels; a model on a GPU would then fail deep inside its first forward pass. A tiny
search on each device, once per process, finds that out first and says how to fix it.
"""

from __future__ import annotations

import functools

import torch

from hemeplm.errors import HemeplmError

REBUILD = "FORCE_CUDA=1 pip install --no-build-isolation --no-cache-dir --force-reinstall torch-cluster"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when a GPU is visible, else the CPU; any other name as given.

    Raises:
        HemeplmError: when the name is not a device, a GPU is asked for that this torch cannot use,
            or the neighbour search does not run on it (:func:`check_neighbour_search`).
    """
    if name == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise HemeplmError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HemeplmError(f"device {name!r}: this torch ({torch.__version__}) sees no GPU; install a CUDA build of "
                           "torch (README, Set up) or use the CPU")
    check_neighbour_search(str(device))
    return device


@functools.lru_cache(maxsize=None)
def check_neighbour_search(device: str) -> None:
    """Run a radius search over three points on ``device``; a failure is a :class:`HemeplmError`
    that says how to install or rebuild torch-cluster for it."""
    try:
        from torch_cluster import radius_graph
    except ImportError as exc:
        raise HemeplmError(f"torch-cluster is not installed ({exc}); install it into this environment with "
                           f"`pip install --no-build-isolation torch-cluster` ({REBUILD} for a GPU)") from None
    try:
        radius_graph(torch.zeros(3, 3, device=device), r=1.0)
    except (RuntimeError, AssertionError) as exc:
        how = (f"rebuild it with CUDA against the installed torch: {REBUILD}" if device.startswith("cuda")
               else "reinstall it against the installed torch: pip install --no-build-isolation torch-cluster")
        raise HemeplmError(f"torch-cluster cannot search neighbours on {device} "
                           f"({' '.join(str(exc).split())[:200]}); {how}") from None


def in_precision(fn, precision: str):
    """A denoiser ``fn(x_t, t, cond, mask)`` run under bfloat16 autocast on its input's device for ``precision``
    "bfloat16", its output back in float32; ``fn`` itself for "float32". Only the network is wrapped: the geometry
    around it (superpositions, the projection) stays in float32."""
    if precision == "float32":
        return fn

    def run(x_t, *args, **kwargs):
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16):
            return fn(x_t, *args, **kwargs).float()

    return run


def keep_freed_memory() -> None:
    """Let this process keep the memory it frees for its next allocations (glibc's malloc; elsewhere nothing).

    glibc hands every freed block above its mmap threshold straight back to the system, so a training step that
    allocates the same activations again page-faults through all of them every time. Raising that threshold to
    32 MiB and the heap's trim threshold to 1 GiB keeps the blocks: 10-13% less time per training step of the
    molecular energy model on one CPU thread. It changes no number computed; peaks of resident memory stay the
    same, but memory freed after a peak goes back to the system later (at exit, or above 1 GiB of free heap)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
