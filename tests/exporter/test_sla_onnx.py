"""The SparseLinearAttention ONNX function alone, run by onnxruntime, against the PyTorch reference (the spec)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from lite3r.exporter.sla_onnx import (
    CORE_INPUTS,
    CORE_OP,
    DOMAIN,
    SLA_OP,
    SLAExportError,
    SLAOptions,
    count_fractions,
    integer_counts,
    sla_functions,
    sla_node,
)
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


def test_core_op_is_the_plugin_op():
    pytest.importorskip("triton")
    from lite3r.plugins import sla_kernel

    assert (sla_kernel.NAMESPACE, sla_kernel.CORE_OP) == (DOMAIN, CORE_OP)
    assert tuple(name for name, _ in sla_kernel.INPUTS) == CORE_INPUTS
