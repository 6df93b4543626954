"""Checkpoint reading (.pt/.pth/.bin via weights_only, .safetensors), wrappers, and one error per failure."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lite3r.models import CheckpointError, load_model

from test_official_parity import assert_matches_official


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_official_layout_checkpoint_loads_and_reproduces_official_outputs(official_tiny, tmp_path, suffix):
    path = tmp_path / f"vggt_tiny{suffix}"
    if suffix == ".safetensors":
        save_file(official_tiny["weights"], path)
    else:
        torch.save(official_tiny["weights"], path)
    model = load_model("vggt-tiny", checkpoint=path)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.state_dict().values())
    assert not model.aggregator.patch_embed.mask_token.requires_grad  # unused token stays frozen, as official
    with torch.no_grad():
        outputs = model(official_tiny["images"])
    assert_matches_official(outputs, official_tiny["outputs"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["model", "state_dict", "module-prefix"],
)
def test_training_wrappers_are_unwrapped(official_tiny, tmp_path, wrap):
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(official_tiny["weights"]), path)
    model = load_model("vggt-tiny", checkpoint=path)
    expected = official_tiny["weights"]["camera_head.embed_pose.weight"]
    assert torch.equal(model.camera_head.embed_pose.weight, expected)


def test_half_precision_checkpoint_is_cast_to_the_model_dtype(official_tiny, tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in official_tiny["weights"].items()}, path)
    model = load_model("vggt-tiny", checkpoint=path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def _error(tmp_path, official_tiny, case):
    sd = dict(official_tiny["weights"])
    path = tmp_path / "ckpt.pt"
    if case == "missing_file":
        path = tmp_path / "nope.pt"
    elif case == "bad_suffix":
        path = tmp_path / "ckpt.ckpt"
        path.write_bytes(b"")
    elif case == "corrupt_pt":
        path.write_bytes(b"this is not a checkpoint")
    elif case == "corrupt_safetensors":
        path = tmp_path / "ckpt.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    elif case == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    elif case == "not_tensors":
        torch.save({**sd, "epoch": 3, "lr": 0.1}, path)
    elif case == "missing_keys":
        torch.save({k: v for k, v in sd.items() if not k.startswith("camera_head.trunk")}, path)
    elif case == "unexpected_keys":
        torch.save({**sd, "extra_head.weight": torch.zeros(1)}, path)
    elif case == "shape_mismatch":
        torch.save({**sd, "depth_head.norm.weight": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", r"checkpoint not found: .*nope\.pt"),
        ("bad_suffix", r"unsupported checkpoint format '\.ckpt'.*use \.pt, \.pth, \.bin or \.safetensors"),
        ("corrupt_pt", r"cannot read checkpoint .*ckpt\.pt"),
        ("corrupt_safetensors", r"cannot read safetensors checkpoint"),
        ("not_a_state_dict", r"does not hold a state dict \(got list\)"),
        ("not_tensors", r"is not a state dict: 2 entries are not tensors \(epoch, lr\)"),
        ("missing_keys", r"does not match the model: 16 missing keys \(camera_head\.trunk\.0\.norm1\.weight, "),
        ("unexpected_keys", r"does not match the model: 1 unexpected keys \(extra_head\.weight\)"),
        ("shape_mismatch", r"shape mismatch in 1 tensors \(depth_head\.norm\.weight: model expects \(64,\), "
                           r"checkpoint has \(3,\)\)"),
    ],
)
def test_bad_checkpoint_raises_one_clear_error(official_tiny, tmp_path, case, message):
    path = _error(tmp_path, official_tiny, case)
    with pytest.raises(CheckpointError, match=message):
        load_model("vggt-tiny", checkpoint=path)


class _Payload:
    """Unpickling this would run ``_mark`` — weights_only loading must refuse instead."""

    def __reduce__(self):
        return (_mark, ())


_MARKS = []


def _mark():
    _MARKS.append("pickled code ran")


class _SystemCall:
    """Pickles as a call of ``os.system``: torch's refusal names it differently, and advises weights_only=False."""

    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("payload", [_Payload, _SystemCall])
def test_pickled_objects_are_refused_without_running_them(tmp_path, payload):
    path = tmp_path / "evil.pt"
    torch.save({"aggregator.camera_token": payload()}, path)
    with pytest.raises(CheckpointError, match="holds a pickled Python object .* lite3r never unpickles") as error:
        load_model("vggt-tiny", checkpoint=path)
    assert "weights_only" not in str(error.value)  # never the advice to unpickle an untrusted file
    assert _MARKS == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_nan_or_inf_weights_are_one_error_naming_the_tensor(official_tiny, tmp_path, bad, suffix):
    weights = dict(official_tiny["weights"])
    weights["aggregator.camera_token"] = weights["aggregator.camera_token"].clone()
    weights["aggregator.camera_token"][0, 0, 0, 3] = bad
    path = tmp_path / f"bad{suffix}"
    save_file(weights, path) if suffix == ".safetensors" else torch.save(weights, path)
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(CheckpointError, match=rf"tensor 'aggregator\.camera_token' has 1 {kind} value"):
        load_model("vggt-tiny", checkpoint=path)
