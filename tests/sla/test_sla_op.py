"""The registered op: schema, fake implementation and autograd (opcheck), one node under torch.export, backend
choice, and one clear error per kind of bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lite3r.sla import sparse_linear_attention
from lite3r.sla.op import BACKEND_ENV, resolve_backend
from lite3r.sla.reference import sparse_linear_attention_reference


def _inputs(length=150, dim=16, dtype=torch.float32, requires_grad=False):
    q, k, v = (torch.randn(2, 2, length, dim, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    weight = torch.randn(dim, dim, requires_grad=requires_grad)
    bias = torch.randn(dim, requires_grad=requires_grad)
    return q, k, v, weight, bias


def test_opcheck_schema_fake_and_autograd_registration():
    args = (*_inputs(requires_grad=True), 0.25, 0.25, 64, 64, "softmax", "reference")
    torch.library.opcheck(torch.ops.lite3r.sparse_linear_attention.default, args)


def test_op_output_and_gradients_equal_the_reference():
    inputs = _inputs(requires_grad=True)
    out = sparse_linear_attention(*inputs, kh=0.25, kl=0.25, feature_map="elu")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    ref = sparse_linear_attention_reference(*inputs, kh=0.25, kl=0.25, feature_map="elu")
    want = torch.autograd.grad(ref, inputs, grad)
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_quantized_qk_op_equals_its_reference_and_refuses_gradients():
    inputs = _inputs(dim=64)
    with torch.no_grad():
        got = sparse_linear_attention(*inputs, kh=0.25, kl=0.25, qk_codes="int8")
    want = sparse_linear_attention_reference(*inputs, kh=0.25, kl=0.25, qk_codes="int8")
    torch.testing.assert_close(got, want)
    exact = sparse_linear_attention_reference(*inputs, kh=0.25, kl=0.25)
    assert 0 < (got - exact).norm() / exact.norm() < 0.02  # the scores' quantization, and no more
    torch.library.opcheck(torch.ops.lite3r.sparse_linear_attention_quantized_qk.default,
                          (*inputs, 0.25, 0.25, 64, 64, "softmax", "reference", "fp8"), test_utils=("test_schema",
                          "test_faketensor"))  # fmt: skip
    with pytest.raises(ValueError, match="qk_codes='int8' is inference only"):
        sparse_linear_attention(*_inputs(dim=64, requires_grad=True), qk_codes="int8")
    with pytest.raises(ValueError, match=r"qk_codes must be None or one of \('int8', 'fp8'\); got 'int4'"):
        sparse_linear_attention(*inputs, qk_codes="int4")


class _Core(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj_lin = nn.Linear(dim, dim)

    def forward(self, q, k, v):
        return sparse_linear_attention(q, k, v, self.proj_lin.weight, self.proj_lin.bias)


def test_export_sees_one_op_node():
    q, k, v, *_ = _inputs()
    graph = torch.export.export(_Core(16), (q, k, v)).graph
    calls = [node.target for node in graph.nodes if node.op == "call_function"]
    assert calls == [torch.ops.lite3r.sparse_linear_attention.default]


def test_auto_backend_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend("auto", torch.zeros(1, 1, 8, 64, dtype=torch.bfloat16)) == "reference"


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert resolve_backend("auto", torch.zeros(1, 1, 8, 64)) == "reference"
    monkeypatch.setenv(BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("auto", torch.zeros(1, 1, 8, 64))


@pytest.mark.parametrize(
    "dtype, dim, message",
    [(torch.float32, 64, "dtype torch.float32"), (torch.bfloat16, 32, "head dim 32"), (torch.bfloat16, 64, "CPU")],
)
def test_forced_triton_backend_refuses_what_it_cannot_run(monkeypatch, dtype, dim, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=message):
        resolve_backend("triton", torch.zeros(1, 1, 8, dim, dtype=dtype))


def _replace(inputs, index, value):
    return tuple(value if i == index else x for i, x in enumerate(inputs))


@pytest.mark.parametrize(
    "index, bad, error, message",
    [
        (1, torch.randn(2, 2, 149, 16), ValueError, "share one shape"),
        (0, torch.randn(2, 150, 16), ValueError, "share one shape"),
        (2, torch.randn(2, 2, 150, 16, dtype=torch.float64), TypeError, "share one floating dtype"),
        (3, torch.randn(16, 8), ValueError, "proj_lin must be"),
        (4, torch.randn(8), ValueError, "proj_lin must be"),
    ],
)
def test_bad_inputs_raise_one_clear_error(index, bad, error, message):
    with pytest.raises(error, match=message):
        sparse_linear_attention(*_replace(_inputs(), index, bad))


def test_bad_options_raise_before_any_work():
    with pytest.raises(ValueError, match="block_q and block_k"):
        sparse_linear_attention(*_inputs(), block_q=96)
    with pytest.raises(ValueError, match="backend must be one of"):
        sparse_linear_attention(*_inputs(), backend="cuda")


def test_cuda_export_records_the_triton_kernels_for_every_frame_count():
    """torch.export of a bf16 CUDA SLA layer with a dynamic frame count (fake CUDA tensors: no GPU needed), then
    the op's decomposition as AOTInductor runs it: the graph holds the Triton launches with symbolic sizes, no
    lite3r op and no assumption about the frame count (the host code never branches on the sequence length)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental import _config as fx_config

    class Frames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.core = _Core(64)

        def forward(self, x):  # x [1, S, 1374, 64]: one head over S frames of VGGT-1B tokens
            tokens = x.flatten(1, 2).unsqueeze(1)
            return self.core(tokens, tokens * 2, tokens + 1)

    model = Frames().requires_grad_(False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        linear = model.core.proj_lin
        linear.weight = nn.Parameter(torch.empty(64, 64, device="cuda", dtype=torch.bfloat16), requires_grad=False)
        linear.bias = nn.Parameter(torch.empty(64, device="cuda", dtype=torch.bfloat16), requires_grad=False)
        x = torch.empty(1, 8, 1374, 64, device="cuda", dtype=torch.bfloat16)
        frames = torch.export.Dim("frames", min=2, max=100)
        with fx_config.patch(backed_size_oblivious=True):
            program = torch.export.export(model, (x,), dynamic_shapes={"x": {1: frames}}, strict=False)
            graph = program.run_decompositions(decompose_custom_triton_ops=True).graph
    calls = [node for node in graph.nodes if node.op == "call_function"]
    assert not [n for n in calls if "lite3r" in str(n.target) or "assert" in str(n.target)]
    wrapper = torch.ops.higher_order.triton_kernel_wrapper_functional
    launches = [n.kwargs["kwargs"] for n in calls if n.target is wrapper]
    assert len(launches) == 6  # pool, key states, classify, two marginal sums, fused forward
    tiles = {name: value for k in launches for name, value in k.items() if name.isupper()}
    assert tiles["CHUNK"] == 256 and tiles["BLOCK_M"] == tiles["BLOCK_K"] == 64  # fixed tiles, masked
    lengths = [k["seq_len"] for k in launches if "seq_len" in k]
    assert len(lengths) == 3 and all(isinstance(n, torch.fx.Node) for n in lengths)  # symbolic, not 8 * 1374


def test_kernels_declare_no_default_arguments():
    """Inductor, compiling a user Triton kernel inside a graph, passes None for an omitted argument with a
    default (torch 2.11 on the H200: the forward kernel's ``range(0, n, STEP_BLOCKS)`` failed to compile)."""
    import inspect

    from lite3r.sla import kernels

    jitted = {name: k.fn for name, k in vars(kernels).items() if name.endswith("_kernel") and hasattr(k, "fn")}
    assert {"forward_kernel", "backward_query_kernel", "classify_kernel"} <= set(jitted)
    defaults = {name: [p for p, v in inspect.signature(fn).parameters.items() if v.default is not inspect.Parameter.empty]
                for name, fn in jitted.items()}  # fmt: skip
    assert defaults == {name: [] for name in jitted}


@pytest.mark.parametrize("chunk, warps", [(16, 1), (64, 4), (96, 1)])
def test_classify_refuses_a_chunk_threads_would_share(chunk, warps):
    """The radix select counts each key once only if no two threads hold it (chunk >= 32 * warps, a power of two)."""
    from lite3r.sla import kernels

    with pytest.raises(ValueError, match="power of two >= 32"):
        kernels.classify(torch.rand(1, 1, 2, 40), 0.2, 0.1, torch.float32, chunk=chunk, warps=warps)
