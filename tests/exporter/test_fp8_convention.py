"""One FP8 convention: ModelOpt's fake quantizer, ``FP8Linear`` and the exported ONNX Q/DQ (run in onnxruntime)
give the same e4m3 codes and the same dequantized values, bit for bit, over a sweep of amax values whose inputs
sit on every rounding boundary (``fp8_sweep``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fp8_sweep import onnx_quantize, sweep
from lite3r.deploy import FP8Linear
from lite3r.quant import TINY_AMAX, fp8_dequant_scale, fp8_multiplier, quantize_e4m3


@pytest.fixture(scope="module")
def swept():
    amaxes, inputs = sweep()
    multipliers = fp8_multiplier(torch.from_numpy(amaxes)).reshape(-1, 1)
    codes = quantize_e4m3(torch.from_numpy(inputs), multipliers)
    return amaxes, inputs, codes, multipliers


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def test_helper_is_modelopts_fake_quantizer(swept):
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    amaxes, inputs, codes, multipliers = swept
    quantizer = TensorQuantizer(QuantizerAttributeConfig(num_bits=(4, 3), axis=None))
    for k, amax in enumerate(amaxes):
        quantizer.amax = torch.tensor(amax)
        fake = quantizer(torch.from_numpy(inputs[k]))
        ours = codes[k].float() * fp8_dequant_scale(multipliers[k])
        np.testing.assert_array_equal(_bits(fake), _bits(ours), err_msg=f"amax {amax!r}")


def test_onnx_qdq_gives_modelopts_codes(swept):
    amaxes, inputs, codes, multipliers = swept
    onnx_codes, onnx_dequantized = onnx_quantize(amaxes, inputs)
    np.testing.assert_array_equal(_bits(onnx_codes), _bits(codes.float()))
    np.testing.assert_array_equal(_bits(onnx_dequantized), _bits(codes.float() * fp8_dequant_scale(multipliers)))


def test_fp8_linear_stores_and_quantizes_with_the_same_codes(swept):
    from lite3r.deploy.torch.fp8 import _quantize_input

    amaxes, inputs, codes, _ = swept
    whole = 256 * (inputs.shape[1] // 256)  # FP8Linear takes multiples of 16 in and out
    for k in range(len(amaxes)):
        weight = torch.from_numpy(inputs[k, :whole]).reshape(-1, 16)
        layer = FP8Linear(weight, None, torch.tensor(amaxes[k]), torch.tensor(amaxes[k]))
        expected = codes[k, :whole].reshape(weight.shape)
        assert torch.equal(layer.weight.view(torch.uint8), expected.view(torch.uint8))
        as_input = _quantize_input(weight, layer.input_scale_reciprocal)
        assert torch.equal(as_input.view(torch.uint8), expected.view(torch.uint8))


def test_tiny_amax_is_treated_as_one_everywhere():
    for amax in (0.0, TINY_AMAX):
        assert fp8_multiplier(amax).item() == 448.0
    above = np.nextafter(np.float32(TINY_AMAX), np.float32(1))
    assert fp8_multiplier(above).item() == np.float32(448) / above


def test_dequant_scale_is_modelopts_not_amax_over_448(swept):
    """The old exporter wrote ``amax / 448``; it differs from ModelOpt's ``1 / (448 / amax)`` for many amax."""
    amaxes = torch.from_numpy(swept[0])
    differs = (fp8_dequant_scale(fp8_multiplier(amaxes)) != amaxes / 448).float().mean().item()
    assert differs > 0.1
