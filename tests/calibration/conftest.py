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
def _toy_ops_on_one_thread(one_thread):
    """Every test here runs toy-sized ops (see tests/conftest.py: one_thread)."""
