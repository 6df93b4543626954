"""Depth-Anything-3: golden official outputs, checkpoints, forward contract, swaps and options."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lite3r.models import CheckpointError, ConfigError, load_model, load_state_dict_strict
from lite3r.models.attention import Attention

from conftest import assert_checkpointing_keeps_gradients
from test_vggt_model import ExplicitSoftmaxCore

DA3_KEYS = ("depth", "depth_conf", "extrinsics", "intrinsics")
TIED = [f"head.scratch.output_conv2_aux.{level}.2.{p}" for level in range(4) for p in ("weight", "bias")]


def assert_matches_official(outputs: dict, reference: dict) -> None:
    assert list(outputs) == list(DA3_KEYS)
    for key in DA3_KEYS:
        scale = reference[key].abs().max().item()
        torch.testing.assert_close(outputs[key], reference[key], rtol=0, atol=1e-5 * max(scale, 1.0), msg=key)


@pytest.fixture(scope="module")
def da3_tiny(official_da3_tiny) -> torch.nn.Module:
    model = load_model("da3-tiny")
    load_state_dict_strict(model, official_da3_tiny["weights"])
    return model


def test_official_weights_reproduce_official_outputs(da3_tiny, official_da3_tiny):
    with torch.no_grad():
        outputs = da3_tiny(official_da3_tiny["images"])
    assert_matches_official(outputs, official_da3_tiny["outputs"])


def test_fixture_exercises_reference_selection_and_a_resized_position_table(official_da3_tiny):
    # 2 scenes of 4 views: the official code selected views 3 and 1 as references (scripts/compare_official_da3.py
    # prints them), so the fixture only passes if views are reordered, and restored, per scene.
    B, S, _, H, W = official_da3_tiny["images"].shape
    assert (B, S, H, W) == (2, 4, 56, 70)  # the 8x8 position table (img_size 112) is resized to 4x5
    assert official_da3_tiny["weights"]["backbone.pretrained.pos_embed"].shape[1] == 8 * 8 + 1
    unselected = load_model("da3-tiny", ref_view_strategy="first")
    load_state_dict_strict(unselected, official_da3_tiny["weights"])
    with torch.no_grad():
        extrinsics = unselected(official_da3_tiny["images"])["extrinsics"]
    assert (extrinsics - official_da3_tiny["outputs"]["extrinsics"]).abs().max() > 0.1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_official_checkpoint_files_load_strictly(official_da3_tiny, tmp_path, suffix):
    path = tmp_path / f"da3_tiny{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(official_da3_tiny["weights"], path)
    model = load_model("da3-tiny", checkpoint=path)
    with torch.no_grad():
        outputs = model(official_da3_tiny["images"])
    assert_matches_official(outputs, official_da3_tiny["outputs"])


def test_hugging_face_layout_loads_prefixed_and_deduplicated(official_da3_tiny, tmp_path):
    # Saved through the official API class (`.model`) with safetensors' save_model: every name has "model." and
    # the aux LayerNorm shared by the four ray levels is stored once.
    weights = {f"model.{k}": v for k, v in official_da3_tiny["weights"].items() if k not in TIED[2:]}
    path = tmp_path / "model.safetensors"
    save_file(weights, path)
    model = load_model("da3-tiny", checkpoint=path)
    norms = {id(model.get_submodule(f"head.scratch.output_conv2_aux.{level}.2")) for level in range(4)}
    assert len(norms) == 1  # one module, as in the official head
    with torch.no_grad():
        outputs = model(official_da3_tiny["images"])
    assert_matches_official(outputs, official_da3_tiny["outputs"])


def _bad(weights: dict, case: str) -> dict:
    weights = dict(weights)
    if case == "missing_keys":
        return {k: v for k, v in weights.items() if not k.startswith("cam_dec.")}
    if case == "unexpected_keys":
        return {**weights, "head.scratch.sky_output_conv2.0.weight": torch.zeros(1)}
    if case == "shape_mismatch":
        return {**weights, "backbone.pretrained.camera_token": torch.zeros(1, 3, 32)}
    weights[TIED[2]] = weights[TIED[2]] + 1  # "tied_differ"
    return weights


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_keys", r"does not match the model: 10 missing keys \(cam_dec\.backbone\.0\.weight, "),
        ("unexpected_keys", r"1 unexpected keys \(head\.scratch\.sky_output_conv2\.0\.weight\)"),
        ("shape_mismatch", r"shape mismatch in 1 tensors \(backbone\.pretrained\.camera_token: model expects "
                           r"\(1, 2, 32\), checkpoint has \(1, 3, 32\)\)"),
        ("tied_differ", r"output_conv2_aux\.0\.2\.weight and head\.scratch\.output_conv2_aux\.1\.2\.weight differ"),
    ],
)
def test_bad_checkpoint_raises_one_clear_error(official_da3_tiny, tmp_path, case, message):
    path = tmp_path / "ckpt.pt"
    torch.save(_bad(official_da3_tiny["weights"], case), path)
    with pytest.raises(CheckpointError, match=message):
        load_model("da3-tiny", checkpoint=path)


@pytest.mark.parametrize("shape", [(2, 3, 56, 70), (2, 3, 3, 42, 56)], ids=["4d-2views", "5d-batched-3views"])
def test_output_keys_and_shapes(da3_tiny, shape):
    with torch.no_grad():
        out = da3_tiny(torch.rand(shape))
    B, S = (1, shape[0]) if len(shape) == 4 else shape[:2]
    H, W = shape[-2:]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "depth": (B, S, H, W), "depth_conf": (B, S, H, W), "extrinsics": (B, S, 3, 4), "intrinsics": (B, S, 3, 3)
    }
    assert (out["depth"] > 0).all() and (out["depth_conf"] > 1).all()  # exp and 1 + exp
    rotations = out["extrinsics"][..., :3]
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), torch.eye(3).expand_as(rotations),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out["intrinsics"][..., :2, 2], torch.tensor([W / 2, H / 2]).expand(B, S, 2))


def test_bad_input_raises_one_clear_error(da3_tiny):
    with pytest.raises(ValueError, match=r"DA3 expects 3-channel images with height and width multiples of 14"):
        da3_tiny(torch.rand(2, 3, 50, 56))


def test_selected_reference_makes_outputs_follow_a_view_permutation(da3_tiny, official_da3_tiny):
    # The reference is chosen from the views' content, and outputs come back in input order, so permuting the
    # views permutes the outputs (only the sum order of cross-view attention changes).
    images = official_da3_tiny["images"][:1]
    permutation = [2, 0, 3, 1]
    with torch.no_grad():
        out = da3_tiny(images)
        permuted = da3_tiny(images[:, permutation])
    for key in DA3_KEYS:
        torch.testing.assert_close(permuted[key], out[key][:, permutation], rtol=1e-4, atol=1e-4, msg=key)


def test_scenes_in_a_batch_are_independent(da3_tiny, official_da3_tiny):
    images = official_da3_tiny["images"]
    with torch.no_grad():
        batched = da3_tiny(images)
        single = [da3_tiny(scene) for scene in images]
    for key in DA3_KEYS:
        torch.testing.assert_close(batched[key], torch.cat([s[key] for s in single]), msg=key)


def test_every_backbone_attention_goes_through_the_swappable_core(da3_tiny):
    images = torch.rand(1, 3, 3, 42, 42)
    with torch.no_grad():
        expected = da3_tiny(images)
    swapped = load_model("da3-tiny")
    swapped.load_state_dict(da3_tiny.state_dict())
    attentions = [m for m in swapped.modules() if isinstance(m, Attention)]
    assert len(attentions) == 6 + 1  # backbone blocks, camera-encoder trunk (not run)
    for attention in attentions:
        attention.core = ExplicitSoftmaxCore()
    with torch.no_grad():
        got = swapped(images)
    assert sum(a.core.calls for a in attentions) == 6
    for key in DA3_KEYS:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_gradient_checkpointing_gives_the_same_gradients(da3_tiny, monkeypatch):
    plain = load_model("da3-tiny")
    plain.load_state_dict(da3_tiny.state_dict())
    loss = lambda out: out["depth"].mean() + out["extrinsics"].square().mean()  # noqa: E731
    assert_checkpointing_keeps_gradients(plain, torch.rand(1, 3, 3, 28, 28), loss, monkeypatch, 6)


def test_camera_encoder_refuses_to_run(da3_tiny):
    with pytest.raises(NotImplementedError, match="camera-conditioned mode"):
        da3_tiny.cam_enc(torch.zeros(1, 2, 3, 4))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dept": 3}, r"unknown DA3 config field\(s\) dept; valid fields: .*alt_start"),
        ({"alt_start": 1}, r"alt_start 1 must be in \[2, depth=6\)"),
        ({"out_layers": (1, 3, 4, 6)}, r"out_layers \(1, 3, 4, 6\) must be 4 layer indices in \[0, depth=6\)"),
        ({"ref_view_strategy": "random"}, r"ref_view_strategy 'random' must be one of saddle_balanced, "),
    ],
)
def test_bad_config_raises_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_model("da3-tiny", **overrides)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("heads", ["16-bit", "float32"])
def test_16bit_weights_run_and_track_float32(da3_tiny, official_da3_tiny, dtype, autocast, heads):
    """Cast to bf16/fp16 (heads too, or heads kept float32), with or without autocast: outputs in the heads' dtype,
    close to the float32 model. One scene of 2 views: in 16 bits a near-tie may pick another reference view."""
    model = load_model("da3-tiny")
    model.load_state_dict(da3_tiny.state_dict())
    model.to(dtype)
    if heads == "float32":
        for head in (model.head, model.cam_dec):
            head.float()
    images = official_da3_tiny["images"][:1, :2]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = model(images)
    with torch.no_grad():
        reference = da3_tiny(images)
    assert out["depth"].dtype == (dtype if heads == "16-bit" else torch.float32)
    for key in DA3_KEYS:
        error = (out[key].float() - reference[key]).norm() / reference[key].norm()
        assert error < 5e-2, (key, error.item())
