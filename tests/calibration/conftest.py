"""A calibrated vggt-tiny, built once per module: ModelOpt's first import and quantize take a few seconds."""

from __future__ import annotations

import copy

import pytest
import torch

import lite3r
from lite3r.data import make_scene


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(2, 56, 56, seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def float_model():
    torch.manual_seed(0)
    return lite3r.load_model("vggt-tiny").eval()


@pytest.fixture(scope="module")
def calibrated(float_model, scenes):
    from lite3r.calibration import calibrate_fp8

    return calibrate_fp8(copy.deepcopy(float_model), scenes)


@pytest.fixture(autouse=True)
def _one_thread():
    """Toy-sized ops are overhead-bound: on a busy 2-core machine extra threads only add waiting (~10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
