"""The device a run uses, and a clear error when torch-cluster cannot search neighbours there."""

from __future__ import annotations

import pytest
import torch
import torch_cluster

from hemeplm.device import check_neighbour_search, resolve_device
from hemeplm.errors import HemeplmError


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
