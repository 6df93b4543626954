"""``lite3r.parity.ort_16bit``: 16-bit graphs on ONNX Runtime's CPU provider, rounded after every op."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lite3r.parity.ort_16bit import is_16bit, per_op_rounding, per_op_rounding_file

NUMPY = {TensorProto.BFLOAT16: ml_dtypes.bfloat16, TensorProto.FLOAT16: np.float16}
EPS = {TensorProto.BFLOAT16: 2**-7, TensorProto.FLOAT16: 2**-10}  # spacing just above 1.0


def _chain(dtype: int) -> onnx.ModelProto:
    """float32 x -> 16-bit -> Mul by w -> Sub 1 -> Reshape -> float32 y. With x = 1 + eps and w = 1 + 3 eps the
    product 1 + 4 eps + 3 eps^2 rounds to 1 + 4 eps; unrounded, ``- 1`` keeps the 3 eps^2 and the result rounds to
    4 eps (1 + eps) instead of 4 eps. Mul and Sub have no bf16 CPU kernel, and ONNX Runtime runs the fp16 pair in
    float32 without rounding in between."""
    eps, numpy = EPS[dtype], NUMPY[dtype]
    weights = [
        numpy_helper.from_array(np.array([1.0 + 3 * eps, 3.0], dtype=numpy), "w"),
        numpy_helper.from_array(np.array(1.0, dtype=numpy), "one"),
        numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=dtype),
        helper.make_node("Mul", ["x16", "w"], ["p"]),
        helper.make_node("Sub", ["p", "one"], ["d"]),
        helper.make_node("Reshape", ["d", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _x(dtype: int) -> np.ndarray:
    return np.array([[1.0 + EPS[dtype], 1.0], [-3.0, 0.1]], dtype=np.float32)


def _rounded(a, dtype: int) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(NUMPY[dtype]).astype(np.float32)


def test_plain_onnxruntime_runs_neither_faithfully():
    """Why the module exists (if ONNX Runtime changes, this fails and the module can shrink): bf16 arithmetic
    does not load, and an fp16 product is not rounded before the next op."""
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        _run(_chain(TensorProto.BFLOAT16), _x(TensorProto.BFLOAT16))
    eps = EPS[TensorProto.FLOAT16]
    assert _run(_chain(TensorProto.FLOAT16), _x(TensorProto.FLOAT16))[0, 0] == 4 * eps * (1 + eps)


@pytest.mark.parametrize("dtype", [TensorProto.BFLOAT16, TensorProto.FLOAT16])
def test_every_op_rounds_to_its_16bit_type(dtype):
    x = _x(dtype)
    y = _run(per_op_rounding(_chain(dtype)), x)

    weight = _rounded(np.tile([1.0 + 3 * EPS[dtype], 3.0], (2, 1)), dtype)
    expected = _rounded(_rounded(_rounded(x, dtype) * weight, dtype) - 1.0, dtype)
    np.testing.assert_array_equal(y, expected)
    assert y[0, 0] == 4 * EPS[dtype]  # not 4 eps (1 + eps): the product was rounded before the subtraction


def test_only_ops_without_a_16bit_kernel_are_widened():
    model = per_op_rounding(_chain(TensorProto.BFLOAT16))
    ops = [node.op_type for node in model.graph.node]
    # The graph's two Casts; Mul and Sub: both inputs cast up, the result down. Reshape has a bf16 kernel.
    assert ops.count("Cast") == 2 + 2 * (2 + 1) and ops.count("Reshape") == 1
    float_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    assert is_16bit(_chain(TensorProto.FLOAT16)) and not is_16bit(helper.make_model(float_graph))


def test_file_copy_keeps_the_weights_external(tmp_path):
    """A model with external weights (as VGGT-1B has) is rewritten from its graph alone, its weights read from
    beside the original, and the copy saved in the given folder; the original is not touched."""
    source = tmp_path / "model.onnx"
    onnx.save_model(_chain(TensorProto.BFLOAT16), source, save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)  # fmt: skip
    before = source.read_bytes()
    (tmp_path / "copy").mkdir()
    path = per_op_rounding_file(source, tmp_path / "copy")
    assert path.parent == tmp_path / "copy"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _x(TensorProto.BFLOAT16)
    expected = _run(per_op_rounding(_chain(TensorProto.BFLOAT16)), x)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)
    assert source.read_bytes() == before
