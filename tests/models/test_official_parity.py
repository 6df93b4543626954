"""lite3r's vggt-tiny against outputs of the official facebookresearch/vggt code (golden fixture)."""

from __future__ import annotations

import torch

from lite3r.models import load_model, load_state_dict_strict

from conftest import OUTPUT_KEYS


def assert_matches_official(outputs: dict, reference: dict) -> None:
    assert list(outputs) == list(OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        scale = reference[key].abs().max().item()
        torch.testing.assert_close(outputs[key], reference[key], rtol=0, atol=1e-5 * max(scale, 1.0), msg=key)


def test_official_weights_load_strictly_and_reproduce_official_outputs(official_tiny):
    model = load_model("vggt-tiny")
    load_state_dict_strict(model, official_tiny["weights"])
    with torch.no_grad():
        outputs = model(official_tiny["images"])
    assert_matches_official(outputs, official_tiny["outputs"])


def test_fixture_exercises_several_frames_and_a_resized_position_table(official_tiny):
    # 3 frames: the first-frame and other-frame camera/register tokens both occur, and one "other" is repeated.
    # 56x70 != 112x112: DINOv2's 8x8 position table is resized to 4x5, like VGGT-1B's 37x37 for non-518 inputs.
    B, S, _, H, W = official_tiny["images"].shape
    assert S == 3 and (H, W) == (56, 70)
    assert official_tiny["weights"]["aggregator.patch_embed.pos_embed"].shape[1] == 8 * 8 + 1
