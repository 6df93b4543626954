"""Shared fixtures: the golden official tiny checkpoint and a seeded tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lite3r.models import load_model

FIXTURES = Path(__file__).parent.parent / "fixtures"
OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def _golden(filename: str) -> dict:
    """``weights`` (official key layout), ``images`` and the official ``outputs`` for them."""
    tensors = load_file(FIXTURES / filename)
    split = {"weights": {}, "outputs": {}}
    for name, tensor in tensors.items():
        group, key = name.split(".", 1)
        if group == "input":
            split["images"] = tensor
        else:
            split[{"model": "weights", "output": "outputs"}[group]][key] = tensor
    return split


@pytest.fixture(scope="session")
def official_tiny() -> dict:
    """Written by ``scripts/compare_official_vggt.py --model vggt-tiny --frames 3 --height 56 --width 70
    --save-fixture``."""
    return _golden("vggt_tiny_official.safetensors")


@pytest.fixture(scope="session")
def official_da3_tiny() -> dict:
    """Written by ``scripts/compare_official_da3.py --model da3-tiny --batch 2 --frames 4 --height 56 --width 70
    --seed 7 --save-fixture``."""
    return _golden("da3_tiny_official.safetensors")


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model("vggt-tiny")


def assert_checkpointing_keeps_gradients(model, images, loss, monkeypatch, expected_calls: int) -> None:
    """``model.set_grad_checkpointing(True)`` recomputes ``expected_calls`` blocks and leaves every gradient of
    ``loss(model(images))`` unchanged."""
    import lite3r.models.layers as layers_module

    def grads():
        model.train()
        model.zero_grad()
        loss(model(images)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads()
    calls = []
    original = layers_module.checkpoint
    monkeypatch.setattr(layers_module, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    model.set_grad_checkpointing(True)
    got = grads()
    assert len(calls) == expected_calls
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)

