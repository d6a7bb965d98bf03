"""The device a run uses, a clear error when torch-cluster cannot search neighbours there, and a CPU process that
keeps the memory it frees."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
import torch_cluster

from hemeplm.device import check_neighbour_search, resolve_device
from hemeplm.errors import HemeplmError
from conftest import ROOT


def test_auto_is_the_gpu_when_there_is_one():
    assert resolve_device("auto", local_rank=0) == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(HemeplmError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HemeplmError, match=r"device 'cuda': this torch .* sees no GPU; install a CUDA build"):
            resolve_device("cuda")


def test_neighbour_search_without_cuda_kernels_says_how_to_rebuild(monkeypatch):
    def cpu_only(x, *args, **kwargs):
        raise RuntimeError("Not compiled with CUDA support")

    monkeypatch.setattr(torch_cluster, "radius_graph", cpu_only)
    probe = check_neighbour_search.__wrapped__  # uncached
    with pytest.raises(HemeplmError, match=r"torch-cluster cannot search neighbours on cpu \(Not compiled with "
                                           r"CUDA support\); reinstall it against the installed torch"):
        probe("cpu")
    if torch.cuda.is_available():
        with pytest.raises(HemeplmError, match=r"on cuda:0 .*rebuild it with CUDA .*FORCE_CUDA=1 pip install "
                                               r"--no-build-isolation"):
            probe("cuda:0")
    monkeypatch.undo()
    probe("cpu")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_training_steps():
    """Training steps of the molecular energy model (forces in the loss) allocate the same activations step after
    step; under glibc's defaults they page-fault through thousands of fresh pages each, after keep_freed_memory()
    they reuse the heap's."""
    script = ("import resource, sys, torch\n"
              "from hemeplm.device import keep_freed_memory\n"
              "from hemeplm.models.molecular import MolecularEnergy\n"
              "if sys.argv[1] == '1': keep_freed_memory()\n"
              "torch.manual_seed(0)\n"
              "model, z = MolecularEnergy(), torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])\n"
              "pos = torch.randn(16, 9, 3) * 1.5\n"
              "def step():\n"
              "    e, f = model.energy_and_forces(z, pos, create_graph=True)\n"
              "    (e.pow(2).mean() + f.pow(2).mean()).backward()\n"
              "for _ in range(3): step()\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(10): step()\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    faults = [int(subprocess.run([sys.executable, "-c", script, flag], capture_output=True, text=True, check=True,
                                 env=env).stdout) for flag in ("0", "1")]
    assert faults[1] * 5 < faults[0], faults
