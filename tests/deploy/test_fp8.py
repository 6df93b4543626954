from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lite3r
from lite3r.calibration import calibrate_fp8, quant_state, quantize_fp8
from lite3r.deploy import FP8Linear, FP8UnsupportedError, check_fp8_device, convert_to_fp8
from lite3r.deploy.torch import fp8 as fp8_module
from lite3r.quant import FP8Recipe

pytestmark = pytest.mark.usefixtures("one_thread")

E4M3 = torch.float8_e4m3fn



def _toy(per_channel: bool = False, seed: int = 0):
    """Two linears (one with bias); the second is calibrated on larger activations than the first."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16, bias=False))
    x = torch.randn(4, 7, 32) * 3
    quantize_fp8(model, FP8Recipe(layers=("*",), per_channel_weights=per_channel), lambda m: m(x))
    return model, x


def _fake_quant(t: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """FP8 e4m3 quantize-dequantize written from the format's definition (scale = amax / 448)."""
    scale = amax.float() / 448
    return (t.float() / scale).clamp(-448, 448).to(E4M3).float() * scale


@pytest.mark.parametrize("per_channel", [False, True])
def test_stored_weight_is_modelopts_fake_quantized_weight(per_channel):
    model, _ = _toy(per_channel)
    for linear in (model[0], model[2]):
        fp8 = FP8Linear.from_linear(linear, linear.weight_quantizer.amax, linear.input_quantizer.amax)
        assert fp8.weight.dtype == E4M3
        dequantized = fp8.weight.float() * (fp8.weight_scale.reshape(-1, 1) if per_channel else fp8.weight_scale)
        torch.testing.assert_close(dequantized, linear.weight_quantizer(linear.weight), rtol=0, atol=0)
        by_definition = _fake_quant(linear.weight, linear.weight_quantizer.amax)
        torch.testing.assert_close(dequantized, by_definition, rtol=1e-6, atol=0)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_gemm_equals_fp32_emulation_and_fake_quant(per_channel):
    model, x = _toy(per_channel)
    linear = model[0]
    w_amax, x_amax = linear.weight_quantizer.amax, linear.input_quantizer.amax
    fp8 = FP8Linear.from_linear(linear, w_amax, x_amax)
    x = x * 1.5  # some inputs beyond the calibrated range: both paths must saturate at ±448
    emulated = _fake_quant(x, x_amax) @ _fake_quant(linear.weight, w_amax).T + linear.bias
    with torch.no_grad():
        got, fake = fp8(x), linear(x)
    assert got.shape == fake.shape == (4, 7, 48)
    torch.testing.assert_close(got, emulated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, fake, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, nn.functional.linear(x, linear.weight, linear.bias), rtol=1e-3, atol=1e-3)


def test_output_dtype_follows_autocast_like_nn_linear():
    model, x = _toy()
    fp8 = FP8Linear.from_linear(model[0], model[0].weight_quantizer.amax, model[0].input_quantizer.amax)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp8(x).dtype == nn.Linear(32, 48)(x).dtype == torch.bfloat16
    assert fp8(x).dtype == torch.float32 and fp8(x.bfloat16()).dtype == torch.bfloat16


def test_convert_swaps_exactly_the_quantized_linears():
    model, x = _toy()
    with torch.no_grad():
        expected = model(x)
    convert_to_fp8(model)
    assert [type(m) for m in model] == [FP8Linear, nn.GELU, FP8Linear]
    assert model[2].bias is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_vggt_tiny_fp8_matches_fake_quant_and_quant_state_path():
    from lite3r.data import make_scene

    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-tiny").eval()
    scene = make_scene(2, 56, 56, seed=3)
    fake = calibrate_fp8(copy.deepcopy(teacher), [scene])
    state = quant_state(fake)
    from_modelopt = convert_to_fp8(copy.deepcopy(fake))
    from_json = convert_to_fp8(copy.deepcopy(teacher), state)  # a model that never saw ModelOpt
    layers = FP8Recipe().linear_names(teacher)
    assert all(isinstance(from_json.get_submodule(n), FP8Linear) for n in layers)
    assert isinstance(from_json.camera_head.trunk[0].attn.qkv, nn.Linear)  # heads stay in high precision
    with torch.no_grad():
        reference, a, b = fake(scene.images), from_modelopt(scene.images), from_json(scene.images)
    for key in reference:
        torch.testing.assert_close(a[key], reference[key], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_misaligned_layer_is_refused_with_a_hint():
    linear = nn.Linear(24, 16)
    with pytest.raises(FP8UnsupportedError, match="multiples of 16; this layer is 24 -> 16"):
        FP8Linear.from_linear(linear, torch.tensor(1.0), torch.tensor(1.0))


def test_layer_with_only_a_weight_quantizer_is_refused():
    model, _ = _toy()
    state = quant_state(model)
    state["quantizers"] = [e for e in state["quantizers"] if e["tensor"] == "weight"]
    with pytest.raises(FP8UnsupportedError, match="only a weight quantizer"):
        convert_to_fp8(model, state)


def test_gpu_without_fp8_fails_with_a_clear_message(monkeypatch):
    fp8_module._cuda_capability.cache_clear()
    monkeypatch.setattr(fp8_module, "_cuda_capability", lambda index: ("NVIDIA A100-SXM4-80GB", (8, 0)))
    with pytest.raises(FP8UnsupportedError, match=r"A100-SXM4-80GB \(compute capability 8.0\) has no FP8 tensor cores"):
        check_fp8_device(torch.device("cuda", 0))
    monkeypatch.setattr(fp8_module, "_cuda_capability", lambda index: ("NVIDIA H100", (9, 0)))
    check_fp8_device(torch.device("cuda", 0))


@pytest.mark.gpu
def test_scaled_mm_on_gpu_matches_emulation():
    check_fp8_device(torch.device("cuda"))
    model, x = _toy()
    model = model.cuda()
    linear = model[0]
    fp8 = FP8Linear.from_linear(linear, linear.weight_quantizer.amax, linear.input_quantizer.amax).cuda()
    x = x.cuda().bfloat16()
    emulated = _fake_quant(x, linear.input_quantizer.amax) @ _fake_quant(linear.weight, linear.weight_quantizer.amax).T
    emulated = emulated + linear.bias
    got = fp8(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), emulated, rtol=2e-2, atol=2e-2)  # bf16 output rounding
