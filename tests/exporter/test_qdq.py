"""FP8 Q/DQ insertion on small hand-made graphs, against an FP8 round trip computed in PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lite3r.calibration import QuantStateError
from lite3r.exporter.qdq import insert_fp8_qdq
from lite3r.parity.runners import SessionFromOnnxPath

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((3, 4)).astype(np.float32)  # nn.Linear(4, 3).weight: [out, in]


def linear_graph(transposed_initializer: bool) -> onnx.ModelProto:
    """``y = x @ W^T`` tagged like the PyTorch exporter tags module ``head.fc``: either with the folded ``W^T``
    initializer (simplified export) or with ``Transpose(W)`` in the graph (``simplify=False``)."""
    if transposed_initializer:
        nodes, inits = [], [numpy_helper.from_array(WEIGHT.T.copy(), "w_t")]
    else:
        nodes = [helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0])]
        inits = [numpy_helper.from_array(WEIGHT, "w")]
    matmul = helper.make_node("MatMul", ["x", "w_t"], ["y"])
    matmul.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'head', 'head.fc', 'linear']")
    graph = helper.make_graph(
        [*nodes, matmul], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 3])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def state(input_amax, weight_amax, module="head.fc"):
    def entry(tensor, amax):
        axis = 0 if isinstance(amax, list) else None
        return {"module": module, "tensor": tensor, "format": "e4m3", "num_bits": [4, 3], "axis": axis, "amax": amax}

    return {"quantizers": [entry("input", input_amax), entry("weight", weight_amax)]}


def fp8_round_trip(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """ModelOpt's fake quantizer, written out: multiply by 448 / amax, saturate, cast, multiply by the reciprocal."""
    multiplier = 448 / torch.where(amax <= 2**-24, torch.ones_like(amax), amax)
    return (x * multiplier).clamp(-448, 448).to(torch.float8_e4m3fn).float() * (1 / multiplier)


@pytest.mark.parametrize("transposed_initializer", [True, False])
@pytest.mark.parametrize("weight_amax", [2.0, [1.5, 2.5, 0.75]])
def test_qdq_linear_matches_fp8_round_trip(transposed_initializer, weight_amax):
    model = linear_graph(transposed_initializer)
    assert insert_fp8_qdq(model, state(3.0, weight_amax)) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2 and ops.count("Mul") == 1
    [fp8] = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT8E4M3FN and t.dims]
    assert fp8.name == "head.fc.weight_fp8" and "w" not in {t.name for t in model.graph.initializer}

    x = torch.from_numpy(RNG.uniform(-4, 4, (5, 4)).astype(np.float32))  # beyond amax: saturates at 448
    (y,) = SessionFromOnnxPath(model.SerializeToString())().run(None, {"x": x.numpy()})
    weight_amax = torch.tensor(weight_amax, dtype=torch.float32).reshape(-1, 1)
    expected = fp8_round_trip(x, torch.tensor(3.0)) @ fp8_round_trip(torch.from_numpy(WEIGHT), weight_amax).T
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(y - x.numpy() @ WEIGHT.T).max() > 1e-3  # the FP8 rounding is really there


def test_unknown_module_is_named():
    with pytest.raises(QuantStateError, match=r"names head\.other, which is no linear layer of the exported graph"):
        insert_fp8_qdq(linear_graph(True), state(3.0, 2.0, module="head.other"))


def test_zero_amax_exports_as_modelopt_quantizes():
    """An all-zero weight row calibrates to amax 0; ModelOpt then uses amax 1, and so does the export (it used to
    refuse the quant state that calibration had just written)."""
    model = linear_graph(True)
    insert_fp8_qdq(model, state(0.0, [0.0, 2.5, 0.75]))
    x = torch.from_numpy(RNG.uniform(-1, 1, (5, 4)).astype(np.float32))
    (y,) = SessionFromOnnxPath(model.SerializeToString())().run(None, {"x": x.numpy()})
    weight = fp8_round_trip(torch.from_numpy(WEIGHT), torch.tensor([[0.0], [2.5], [0.75]]))
    np.testing.assert_allclose(y, (fp8_round_trip(x, torch.tensor(0.0)) @ weight.T).numpy(), rtol=1e-6, atol=1e-6)


def test_16bit_activations_get_modelopts_codes():
    """In a bf16 graph the activation is cast to float32 before the multiplier, as ModelOpt casts it, so the codes
    are ModelOpt's for every input; multiplying in bf16 would round ``x * m`` to bf16 first and flip some codes
    (round-half-even on a bf16 product that sits on an e4m3 midpoint). The DQ scale is bf16: the linear stays bf16."""
    from lite3r.exporter.qdq import add_fp8_constants, quantize_activation
    from lite3r.quant import fp8_multiplier, quantize_e4m3

    amax = 3.4662
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.BFLOAT16)], "act",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("codes", TensorProto.FLOAT, [4096])],
    )  # fmt: skip
    add_fp8_constants(graph)
    nodes: list = []
    entry = {"module": "fc", "tensor": "input", "amax": amax}
    quantize_activation(graph, nodes, "fc", "x16", entry, TensorProto.BFLOAT16)
    assert [n.op_type for n in nodes] == ["Cast", "Mul", "QuantizeLinear", "DequantizeLinear"]
    # the bf16 DequantizeLinear has no CPU kernel in ONNX Runtime: the codes are read before it
    read_codes = helper.make_node("Cast", ["fc.input_quantizer.fp8"], ["codes"], to=TensorProto.FLOAT)
    graph.node.extend([*nodes[:-1], read_codes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert stored["fc.input_quantizer.scale"] == TensorProto.BFLOAT16
    assert stored["fc.input_quantizer.multiplier"] == TensorProto.FLOAT

    x = torch.from_numpy(RNG.uniform(-2 * amax, 2 * amax, 4096).astype(np.float32)).bfloat16().float()
    (codes,) = SessionFromOnnxPath(model.SerializeToString())().run(None, {"x": x.numpy()})
    multiplier = fp8_multiplier(amax)
    np.testing.assert_array_equal(codes, quantize_e4m3(x, multiplier).float().numpy())
    in_bf16 = quantize_e4m3((x.bfloat16() * multiplier.bfloat16()).float(), torch.tensor(1.0)).float().numpy()
    assert (in_bf16 != codes).any()  # what the 16-bit Mul would have computed


def test_fp16_scale_that_underflows_is_one_clear_error():
    model = linear_graph(True)
    with pytest.raises(QuantStateError, match=r"head\.fc\.input_quantizer\.scale = .* does not fit float16"):
        insert_fp8_qdq(model, state(1e-6, 2.0), TensorProto.FLOAT16)
