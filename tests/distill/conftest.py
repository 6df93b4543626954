"""vggt-tiny teacher and one 4-view 112x112 scene: long enough (276 tokens, 5 key blocks) for SLA to differ
from dense attention, small enough for a distillation step in well under a second on a CPU."""

from __future__ import annotations

import pytest
import torch

import lite3r
from lite3r.data import make_scene



@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return lite3r.load_model("vggt-tiny").eval()


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(4, 112, 112, seed=0)]


@pytest.fixture(autouse=True)
def _toy_ops_on_one_thread(one_thread):
    """Every test here runs toy-sized ops (see tests/conftest.py: one_thread)."""
