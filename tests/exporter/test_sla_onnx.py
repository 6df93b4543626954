"""The SparseLinearAttention ONNX function alone, run by onnxruntime, against the PyTorch reference (the spec)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from lite3r.exporter.sla_onnx import (
    CORE_INPUTS,
    CORE_OP,
    DOMAIN,
    ONNX_TYPES,
    SLA_OP,
    SLAExportError,
    SLAOptions,
    count_fractions,
    integer_counts,
    plugin_unsupported,
    sla_functions,
    sla_node,
)
from lite3r.plugins import contract
from lite3r.sla.reference import block_counts, block_map, sparse_linear_attention_reference

HEAD_DIM = 16


def one_node_session(options: SLAOptions, batch: int = 1, heads: int = 2) -> ort.InferenceSession:
    """A model whose graph is one SLA node over graph inputs, with a dynamic sequence length."""
    seq = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, heads, "L", HEAD_DIM]) for n in "qkv"]
    proj = [
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [HEAD_DIM, HEAD_DIM]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [HEAD_DIM]),
    ]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, heads, "L", HEAD_DIM])
    graph = helper.make_graph([sla_node(["q", "k", "v", "w", "b"], "out", options, HEAD_DIM)], "sla", seq + proj, [out])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=sla_functions(options))
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_both(options: SLAOptions, q, k, v, weight, bias):
    session = one_node_session(options, *q.shape[:2])
    feeds = {name: t.numpy() for name, t in zip("qkvwb", (q, k, v, weight, bias))}
    (onnx_out,) = session.run(None, feeds)
    reference = sparse_linear_attention_reference(q, k, v, weight, bias, **options._asdict())
    return onnx_out, reference.numpy()


def random_inputs(length: int, batch: int = 1, heads: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, HEAD_DIM, generator=g) for _ in range(3))
    return q, k, v, 0.3 * torch.randn(HEAD_DIM, HEAD_DIM, generator=g), torch.randn(HEAD_DIM, generator=g)


@pytest.mark.parametrize(
    "options, length, batch",
    [
        (SLAOptions(0.3, 0.25, 64, 64, "softmax"), 300, 1),  # 5 key blocks, the last of 44 tokens
        (SLAOptions(0.2, 0.3, 128, 64, "elu"), 711, 2),  # query blocks larger than key blocks
        (SLAOptions(0.05, 0.1, 64, 128, "relu"), 1000, 1),
        (SLAOptions(0.5, 0.0, 64, 64, "softmax"), 40, 1),  # one short block: plain softmax attention
    ],
)
def test_function_matches_reference(options, length, batch):
    onnx_out, reference = run_both(options, *random_inputs(length, batch))
    # float32 throughout; the sums run in a different order than PyTorch's
    np.testing.assert_allclose(onnx_out, reference, rtol=1e-5, atol=2e-6)


def test_every_block_class_occurs_in_the_tested_maps():
    """Guards the test above: a map with no marginal or negligible block would leave branches untested."""
    q, k, *_ = random_inputs(300)
    classes = block_map(q, k, 0.3, 0.25, 64, 64).classes
    assert set(classes.unique().tolist()) == {-1, 0, 1}


def test_tied_scores_follow_the_reference_stable_order():
    """Identical key blocks give equal pooled scores: the lower block index must win, as in a stable sort.

    Small integers keep the scores exact whatever the summation order, so both implementations see true ties.
    """
    _, _, v, weight, bias = random_inputs(6 * 64)
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 3, (1, 2, 6 * 64, HEAD_DIM), generator=g).float()
    k = torch.randint(-2, 3, (1, 2, 64, HEAD_DIM), generator=g).float().repeat(1, 1, 6, 1)
    scores = q.unflatten(2, (6, 64)).mean(3) @ k.unflatten(2, (6, 64)).mean(3).transpose(-1, -2)
    assert (scores == scores[..., :1]).all()
    options = SLAOptions(0.34, 0.34, 64, 64, "softmax")  # 3 critical, 2 negligible of 6
    onnx_out, reference = run_both(options, q, k, v, weight, bias)
    np.testing.assert_allclose(onnx_out, reference, rtol=1e-5, atol=2e-6)
    # Picking other tied blocks changes the output (v differs per block), so the check above has teeth.
    other = sparse_linear_attention_reference(q, k, v.flip(2), weight, bias, **options._asdict()).numpy()
    assert np.abs(other - reference).max() > 0.1


def test_block_counts_use_the_float64_rule_not_the_float32_attribute():
    """kh = 0.05 with 20 key blocks: float32(0.05) * 20 > 1, which would make 2 critical blocks instead of 1."""
    assert np.float32(0.05) * np.float64(20) - 1e-9 > 1
    onnx_out, reference = run_both(SLAOptions(0.05, 0.1, 64, 64, "softmax"), *random_inputs(20 * 64, heads=1))
    np.testing.assert_allclose(onnx_out, reference, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("kh, kl", [(0.05, 0.1), (0.3, 0.3), (0.125, 0.0), (1 / 3, 0.2), (1.0, 0.0), (0.0, 1.0)])
def test_integer_counts_are_the_reference_block_counts(kh, kl):
    """The body's int64 rule on the exact fractions, against reference.block_counts itself."""
    nk = np.arange(1, 3001)
    critical, negligible = integer_counts(nk, *count_fractions(kh, kl))
    assert list(zip(critical.tolist(), negligible.tolist())) == [block_counts(n, kh, kl) for n in range(1, 3001)]


def test_counts_as_fractions():
    assert tuple(map(str, count_fractions(0.05, 0.1))) == ("1/20", "1/10")
    assert tuple(map(str, count_fractions(1 / 3, 0.0))) == ("1/3", "0")
    inexact = r"kh=0\.1000000000010\d*, kl=0\.1 have no exact small fraction \(block counts differ at 1000 key"
    with pytest.raises(SLAExportError, match=inexact):
        count_fractions(0.1 + 1e-12, 0.1)


def test_node_and_functions_follow_the_contract():
    options = SLAOptions(0.05, 0.1, 64, 128, "elu")
    node = sla_node(["q", "k", "v", "w", "b"], "out", options, head_dim=64)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type) == ("lite3r", "SparseLinearAttention")
    assert attributes == pytest.approx(
        {"kh": 0.05, "kl": 0.1, "block_q": 64, "block_k": 128, "feature_map": b"elu", "scale": 0.125,
         "plugin_namespace": b"lite3r"}  # fmt: skip
    )
    outer, core = sla_functions(options)
    assert (outer.domain, outer.name) == (DOMAIN, SLA_OP)
    assert list(outer.input) == ["q", "k", "v", "proj_lin_weight", "proj_lin_bias"]
    [call] = [n for n in outer.node if n.domain == DOMAIN]
    assert (call.op_type, core.name) == (CORE_OP, CORE_OP)
    assert list(core.input) == ["q", "k", "v", "proj_w", "proj_b", "lut", "kv_state", "k_state"]
    # The core reads the node's scale through an attribute reference; everything else is specialised.
    assert [(a.name, a.ref_attr_name) for a in call.attribute if a.ref_attr_name] == [("scale", "scale")]


def _typed_node_model(options: SLAOptions, precision: str, plugin: bool, head_dim: int = 64) -> onnx.ModelProto:
    """One SLA node on q, k, v, proj_lin of ``precision``; graph inputs and output stay float32 (Casts around)."""
    dtype = ONNX_TYPES[precision]
    names = ["q", "k", "v", "w", "b"]
    shapes = [[1, 2, "L", head_dim]] * 3 + [[head_dim, head_dim], [head_dim]]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in zip(names, shapes)]
    nodes = [helper.make_node("Cast", [n], [f"{n}_typed"], to=dtype) for n in names]
    nodes += [sla_node([f"{n}_typed" for n in names], "typed_out", options, head_dim),
              helper.make_node("Cast", ["typed_out"], ["out"], to=TensorProto.FLOAT)]  # fmt: skip
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, "L", head_dim])
    graph = helper.make_graph(nodes, "sla", inputs, [out])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    functions = sla_functions(options, precision=precision, plugin=plugin)
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(
    "precision, plugin", [("bf16", True), ("fp16", True), ("bf16", False), ("fp32", False)]
)  # fmt: skip
def test_core_node_takes_exactly_the_plugin_types(precision, plugin):
    """Inside the SLA function, the core node's inputs carry the types the plugin declares for 16-bit q, k, v
    (bf16 kv_state with bf16, float32 with fp16), and plugin_namespace only when the plugin is to run it."""
    model = _typed_node_model(SLAOptions(0.05, 0.1, 64, 64, "softmax"), precision, plugin)
    outer_inlined = onnx.inliner.inline_selected_functions(model, [(DOMAIN, SLA_OP)])
    inferred = onnx.shape_inference.infer_shapes(outer_inlined, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    [core] = [n for n in inferred.graph.node if n.op_type == CORE_OP]
    if precision == "fp32":
        expected = {name: "i32" if name == "lut" else "fp32" for name in CORE_INPUTS}
    else:
        expected = {name: dtype for name, dtype in contract.dtypes(precision).items() if name != "out"}
    assert {name: types[value] for name, value in zip(CORE_INPUTS, core.input)} == {
        name: ONNX_TYPES[dtype] for name, dtype in expected.items()
    }
    assert ("plugin_namespace" in {a.name for a in core.attribute}) == plugin


def test_plugin_refuses_float32_and_other_head_dims():
    with pytest.raises(ValueError, match="plugin takes"):
        sla_functions(SLAOptions(0.05, 0.1, 64, 64, "softmax"), plugin=True)
    assert plugin_unsupported("bf16", {64, 128}) is None
    assert plugin_unsupported("bf16", {16}) == "head dim 16; the plugin takes 64 or 128"
    assert plugin_unsupported("fp32", {64}) == "fp32 q, k, v; the plugin takes fp16 or bf16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16bit_function_runs_on_cpu_and_tracks_the_reference(precision):
    """onnxruntime runs the 16-bit body (rounded per op, lite3r.parity.ort_16bit) and stays within one unit in the
    last place (of the largest output) of the reference on the same 16-bit inputs, although the body rounds
    kv_state to the plugin's dtype (measured: 0.53 ulp bf16, 0.13 ulp fp16)."""
    from lite3r.parity.ort_16bit import per_op_rounding

    options = SLAOptions(0.3, 0.25, 64, 64, "softmax")
    model = per_op_rounding(_typed_node_model(options, precision, plugin=True))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 64, generator=g).to(dtype) for _ in range(3))
    weight, bias = ((0.1 * torch.randn(*shape, generator=g)).to(dtype) for shape in ((64, 64), (64,)))
    (out,) = session.run(None, {n: t.float().numpy() for n, t in zip("qkvwb", (q, k, v, weight, bias))})
    reference = sparse_linear_attention_reference(q, k, v, weight, bias, **options._asdict()).float().numpy()
    ulp = torch.finfo(dtype).eps * np.abs(reference).max()
    assert np.abs(out - reference).max() <= ulp
