"""Graph passes of the exporter on hand-made graphs, run by onnxruntime before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from lite3r.exporter.graph_passes import outputs_to_float32, transposed_convolutions_as_depth_to_space


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _deconv(kernel: int, stride: int, bias: bool, pads=(0, 0, 0, 0)) -> onnx.ModelProto:
    rng = np.random.default_rng(kernel)
    weights = [numpy_helper.from_array(rng.standard_normal((6, 3, kernel, kernel)).astype(np.float32), "w")]
    if bias:
        weights.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", *(w.name for w in weights)], ["y"], name="up",
                            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads))  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], weights,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])


@pytest.mark.parametrize("kernel, bias", [(4, True), (2, True), (4, False)])
def test_non_overlapping_transposed_convolution_becomes_conv_and_depth_to_space(kernel, bias):
    model = _deconv(kernel, kernel, bias)
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 7)).astype(np.float32)
    [expected] = _run(model, x=x)

    assert transposed_convolutions_as_depth_to_space(model.graph) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Conv", "DepthToSpace"]
    assert {i.name for i in model.graph.initializer} == {"w.as_1x1"} | ({"b.as_1x1"} if bias else set())
    [rewritten] = _run(model, x=x)
    assert rewritten.shape == expected.shape == (2, 3, 5 * kernel, 7 * kernel)
    np.testing.assert_allclose(rewritten, expected, rtol=1e-6, atol=1e-6)  # same sums, another order


@pytest.mark.parametrize("kernel, stride, pads", [(4, 2, (0, 0, 0, 0)), (2, 2, (1, 1, 1, 1))])
def test_overlapping_or_padded_transposed_convolution_is_left_alone(kernel, stride, pads):
    model = _deconv(kernel, stride, True, pads)
    assert transposed_convolutions_as_depth_to_space(model.graph) == 0
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def test_outputs_are_cast_to_float32_at_the_end():
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Neg", ["h"], ["y"]),
             helper.make_node("Abs", ["y"], ["z"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [3]) for n in ("y", "z")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])

    assert outputs_to_float32(model.graph) == 2
    onnx.checker.check_model(model, full_check=True)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT] * 2
    # The reference evaluator keeps fp16 as fp16 (onnxruntime's CPU provider would compute Neg in float32).
    y, z = ReferenceEvaluator(model).run(None, {"x": np.array([1.0, -2.0, 1 / 3], np.float32)})
    assert y.dtype == z.dtype == np.float32
    np.testing.assert_array_equal(y, -np.float16([1.0, -2.0, 1 / 3]).astype(np.float32))
    np.testing.assert_array_equal(z, np.abs(y))  # an output read by another node still feeds it
