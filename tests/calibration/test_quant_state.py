from __future__ import annotations

import copy
import json

import pytest
import torch

from lite3r.calibration import (
    QuantStateError,
    apply_quant_state,
    load_quant_state,
    quant_state,
    read_quant_state,
    save_quant_state,
)
from lite3r.quant import FP8Recipe


def _outputs(model, images):
    with torch.no_grad():
        return model(images)


def test_quant_state_lists_exactly_the_recipe_layers(calibrated, float_model):
    state = quant_state(calibrated)
    layers = FP8Recipe().linear_names(float_model)
    assert [(e["module"], e["tensor"]) for e in state["quantizers"]] == [
        (name, tensor) for name in layers for tensor in ("input", "weight")
    ]
    assert not any(name.startswith(("camera_head", "depth_head", "point_head")) for name in layers)
    for entry in state["quantizers"]:
        quantizer = calibrated.get_submodule(f"{entry['module']}.{entry['tensor']}_quantizer")
        assert entry["amax"] == quantizer.amax.item() > 0
        assert (entry["format"], entry["num_bits"], entry["axis"]) == ("e4m3", [4, 3], None)


def test_json_round_trip_reproduces_the_quantized_model(calibrated, float_model, scenes, tmp_path):
    path = save_quant_state(calibrated, tmp_path / "quant_state.json")
    assert json.loads(path.read_text()) == quant_state(calibrated)  # plain JSON, exact floats
    restored = load_quant_state(copy.deepcopy(float_model), path)
    images = scenes[0].images
    expected, got, unquantized = (_outputs(m, images) for m in (calibrated, restored, float_model))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert not torch.equal(unquantized["depth"], expected["depth"])  # the quantizers really act


def test_apply_disables_quantizers_not_in_the_state(calibrated, float_model):
    state = quant_state(calibrated)
    kept = [e for e in state["quantizers"] if ".global_blocks." in e["module"]]
    model = apply_quant_state(copy.deepcopy(calibrated), {**state, "quantizers": kept})
    assert quant_state(model)["quantizers"] == kept


def test_per_channel_weight_scales_round_trip(float_model, scenes):
    from lite3r.calibration import calibrate_fp8

    model = calibrate_fp8(copy.deepcopy(float_model), scenes[:1], recipe=FP8Recipe(per_channel_weights=True))
    state = json.loads(json.dumps(quant_state(model)))
    weight = next(e for e in state["quantizers"] if e["tensor"] == "weight")
    layer = model.get_submodule(weight["module"])
    assert weight["axis"] == 0 and len(weight["amax"]) == layer.out_features
    torch.testing.assert_close(torch.tensor(weight["amax"]), layer.weight.detach().abs().amax(dim=1))
    restored = apply_quant_state(copy.deepcopy(float_model), state)
    images = scenes[0].images
    torch.testing.assert_close(_outputs(restored, images)["depth"], _outputs(model, images)["depth"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(format="onnx"), "not a lite3r quant state"),
        (lambda s: s.update(version=2), "version 2"),
        (lambda s: s["quantizers"][0].update(amax=-1.0), "amax must be a non-negative number"),
        (lambda s: s["quantizers"][0].update(amax=[1.0]), "amax must be a non-negative number"),
        (lambda s: s["quantizers"][0].update(tensor="output"), "tensor must be one of"),
        (lambda s: s["quantizers"][0].update(format="int8"), "only format e4m3"),
        (lambda s: s["quantizers"][0].pop("axis"), "lacks ['axis']"),
    ],
)
def test_bad_files_fail_with_one_clear_error(calibrated, tmp_path, edit, message):
    state = quant_state(calibrated)
    edit(state)
    path = tmp_path / "quant_state.json"
    path.write_text(json.dumps(state))
    with pytest.raises(QuantStateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_quant_state(path)


def test_state_for_another_architecture_is_refused(calibrated, float_model):
    state = quant_state(calibrated)
    state["quantizers"][0]["module"] = "aggregator.frame_blocks.99.attn.qkv"
    with pytest.raises(QuantStateError, match="no module 'aggregator.frame_blocks.99.attn.qkv'"):
        apply_quant_state(copy.deepcopy(float_model), state)


def test_unreadable_files(tmp_path):
    with pytest.raises(QuantStateError, match="not found"):
        read_quant_state(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(QuantStateError, match="not valid JSON"):
        read_quant_state(tmp_path / "bad.json")


def test_uncalibrated_model_has_no_state(float_model):
    with pytest.raises(QuantStateError, match="no enabled FP8 quantizer"):
        quant_state(copy.deepcopy(float_model))
