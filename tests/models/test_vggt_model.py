"""VGGT forward contract: input forms, output keys and shapes, memory options, the attention-core swap."""

from __future__ import annotations

import pytest
import torch

from lite3r.models import load_model
from lite3r.models.attention import Attention

from conftest import OUTPUT_KEYS, assert_checkpointing_keeps_gradients


@pytest.mark.parametrize(
    "shape", [(2, 3, 112, 112), (1, 2, 3, 112, 112), (2, 3, 3, 56, 84)], ids=["4d", "5d", "batched-nonsquare"]
)
def test_output_keys_and_shapes(tiny, shape):
    with torch.no_grad():
        out = tiny(torch.rand(shape))
    B, S = (1, shape[0]) if len(shape) == 4 else shape[:2]
    H, W = shape[-2:]
    assert list(out) == list(OUTPUT_KEYS)
    expected = {
        "pose_enc": (B, S, 9),
        "depth": (B, S, H, W, 1),
        "depth_conf": (B, S, H, W),
        "world_points": (B, S, H, W, 3),
        "world_points_conf": (B, S, H, W),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert (out["depth"] > 0).all()  # exp activation
    assert (out["depth_conf"] > 1).all() and (out["world_points_conf"] > 1).all()  # 1 + exp
    assert (out["pose_enc"][..., 7:] >= 0).all()  # field of view through ReLU


def test_scenes_in_a_batch_are_independent(tiny):
    scenes = torch.rand(2, 2, 3, 56, 56)
    with torch.no_grad():
        batched = tiny(scenes)
        single = [tiny(scene) for scene in scenes]
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(batched[key], torch.cat([s[key] for s in single]), msg=key)


def test_first_frame_is_the_reference(official_tiny):
    # Trained-like weights: at random init the two camera-token variants differ by only ~1e-6.
    model = load_model("vggt-tiny")
    model.load_state_dict(official_tiny["weights"])
    images = torch.rand(3, 3, 56, 56)
    with torch.no_grad():
        pose = model(images)["pose_enc"][0]
        others_swapped = model(images[[0, 2, 1]])["pose_enc"][0]
        reference_swapped = model(images[[1, 0, 2]])["pose_enc"][0]
    # Frames 1 and 2 are both "other" frames: swapping them only permutes their poses.
    torch.testing.assert_close(others_swapped, pose[[0, 2, 1]], rtol=1e-4, atol=1e-5)
    # The reference frame has its own camera and register tokens: making frame 1 the reference changes poses.
    assert (reference_swapped[[1, 0, 2]] - pose).abs().max() > 0.1


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 100, 112), "multiples of 14"),
        (torch.rand(2, 4, 112, 112), "3-channel"),
        (torch.rand(3, 112, 112), r"\[S, 3, H, W\] or \[B, S, 3, H, W\]"),
        (torch.zeros(2, 3, 112, 112, dtype=torch.uint8), "float images"),
    ],
    ids=["size", "channels", "ndim", "uint8"],
)
def test_bad_input_raises_one_clear_error(tiny, images, message):
    with pytest.raises(ValueError, match=message):
        tiny(images)


def test_aggregator_keeps_only_the_layers_the_heads_read(tiny):
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        layers = tiny.aggregator(images)
    assert sorted(layers) == [1, 2, 4, 5]  # DPT layers; the camera head reads the last (5)
    assert layers[5].shape == (1, 2, 1 + 4 + 16, 2 * 32)


def test_keep_all_layers_gives_identical_outputs(tiny):
    keep_all = load_model("vggt-tiny", keep_all_layers=True)
    keep_all.load_state_dict(tiny.state_dict())
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        assert sorted(keep_all.aggregator(images)) == list(range(6))
        expected, got = tiny(images), keep_all(images)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


class ExplicitSoftmaxCore(torch.nn.Module):
    """softmax(Q K^T / sqrt(D)) V written out, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, q, k, v, frames=None):
        self.calls += 1
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return weights @ v


def test_swapping_the_attention_core_leaves_outputs_unchanged(tiny):
    images = torch.rand(1, 2, 3, 56, 70)
    with torch.no_grad():
        expected = tiny(images)
    swapped = load_model("vggt-tiny")
    swapped.load_state_dict(tiny.state_dict())
    attentions = [m for m in swapped.modules() if isinstance(m, Attention)]
    assert len(attentions) == 2 + 6 + 6 + 1  # DINOv2, frame, global, camera trunk
    for attention in attentions:
        attention.core = ExplicitSoftmaxCore()
    with torch.no_grad():
        got = swapped(images)
    assert sum(a.core.calls for a in attentions) == 2 + 6 + 6 + 4  # the camera trunk runs 4 iterations
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_gradient_checkpointing_gives_the_same_gradients(tiny, monkeypatch):
    plain = load_model("vggt-tiny")
    plain.load_state_dict(tiny.state_dict())
    loss = lambda out: out["depth"].mean() + out["pose_enc"].square().mean()  # noqa: E731
    assert_checkpointing_keeps_gradients(plain, torch.rand(1, 2, 3, 28, 28), loss, monkeypatch, 2 + 6 + 6)


def test_track_head_refuses_to_run(tiny):
    with pytest.raises(NotImplementedError, match="tracking is not implemented in lite3r"):
        tiny.track_head()


def test_dpt_frame_chunks_match_a_single_pass(tiny):
    images = torch.rand(1, 3, 3, 56, 56)
    with torch.no_grad():
        layers = tiny.aggregator(images)
        start = tiny.aggregator.patch_start_idx
        whole = tiny.point_head(layers, (56, 56), start, frames_chunk_size=8)
        chunked = tiny.point_head(layers, (56, 56), start, frames_chunk_size=2)
    for a, b in zip(whole, chunked):  # equal up to batch-size-dependent convolution rounding
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("heads", ["16-bit", "float32"])
def test_16bit_weights_run_and_track_float32(official_tiny, dtype, autocast, heads):
    """A model cast to bf16/fp16 (heads too, or heads kept float32) runs with or without autocast, returns
    outputs in its heads' dtype, and stays close to the float32 model (trained-like golden weights)."""
    reference_model = load_model("vggt-tiny")
    reference_model.load_state_dict(official_tiny["weights"])
    model = load_model("vggt-tiny")
    model.load_state_dict(official_tiny["weights"])
    model.to(dtype)
    if heads == "float32":
        for head in (model.camera_head, model.depth_head, model.point_head):
            head.float()
    images = official_tiny["images"]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = model(images)
    with torch.no_grad():
        reference = reference_model(images)
    assert out["depth"].dtype == (dtype if heads == "16-bit" else torch.float32)
    for key in OUTPUT_KEYS:
        error = (out[key].float() - reference[key]).norm() / reference[key].norm()
        assert error < 5e-2, (key, error.item())


def test_casting_keeps_normalisation_constants_exact():
    model = load_model("vggt-tiny").to(torch.bfloat16)
    normalize = model.aggregator.normalize
    assert normalize.mean.dtype == torch.float32
    torch.testing.assert_close(normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]), rtol=0, atol=0)
    assert not any("normalize" in key for key in model.state_dict())  # official layout unchanged
