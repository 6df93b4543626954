"""Run the SLA Triton kernels under the Triton interpreter and compare them with the reference.

Run as a script (``test_sla_kernels_interpreted.py`` starts it in a subprocess, because TRITON_INTERPRET is read
when a kernel is decorated, and must not leak into other tests). Prints the kernels' Python type, then one JSON object per case:
``{"case", "seed", "errors": {tensor: [kernel_err, low_precision_err, max_abs_ref]}, "unwritten": [...]}``.

The rule (flash-attention's): the kernel's max error against the float32 reference must stay within twice the
error of the same reference computed in the input's precision, plus a small atol (asserted by the test).
Outputs are allocated poisoned (NaN), so an element a kernel never writes shows up as NaN.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from lite3r.sla.op import sparse_linear_attention  # noqa: E402
from lite3r.sla.reference import block_map, sparse_linear_attention_reference  # noqa: E402


def _patch_interpreter_bf16_dot() -> None:
    """The interpreter keeps bf16 as raw uint16 and multiplies the bit patterns in ``tl.dot``
    (triton-lang/triton#11584, not fixed in 3.9); widen bf16 operands to fp32 first. GPU code is unaffected."""
    original = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):
        return original(self, widen(a), widen(b), d, *args)

    interpreter.InterpreterBuilder.create_dot = create_dot


@contextlib.contextmanager
def _poisoned_allocations():
    """Make torch.empty / empty_like return NaN-filled floats, so unwritten outputs cannot pass."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(x):
        return x.fill_(float("nan") if x.is_floating_point() else -1)

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


CASES = {
    "bf16-softmax-64x64": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=200),
    "fp16-elu-128x64": dict(dtype=torch.float16, feature_map="elu", block_q=128, block_k=64, length=300, batch=1),
    "bf16-relu-64x128": dict(dtype=torch.bfloat16, feature_map="relu", block_q=64, block_k=128, length=270, batch=1),
    "bf16-softmax-d128": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=150,
                              head_dim=128, batch=1),
    "bf16-softmax-strided": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=180,
                                 strided=True),
}


def _inputs(batch, heads, length, head_dim, dtype, strided):
    if strided:  # q, k, v as views of one qkv projection, and a transposed dout, as inside Attention
        qkv = torch.randn(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).to(dtype)
        q, k, v = qkv.unbind(0)
        dout = torch.randn(batch, length, heads, head_dim, dtype=dtype).transpose(1, 2)
    else:
        q, k, v, dout = (torch.randn(batch, heads, length, head_dim, dtype=dtype) for _ in range(4))
    return q, k, v, dout


def run_case(name, dtype, feature_map, block_q, block_k, length, head_dim=64, batch=2, heads=1, strided=False):
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    kh, kl = 0.25, 0.34  # 3 to 5 key blocks: every case has critical, marginal and negligible blocks
    q, k, v, dout = _inputs(batch, heads, length, head_dim, dtype, strided)
    weight = torch.randn(head_dim, head_dim) / head_dim**0.5
    bias = torch.randn(head_dim)
    options = dict(kh=kh, kl=kl, block_q=block_q, block_k=block_k, feature_map=feature_map)
    blocks = block_map(q, k, kh, kl, block_q, block_k)

    leaves = [x.detach().requires_grad_() for x in (q, k, v, weight, bias)]
    with _poisoned_allocations():
        out = sparse_linear_attention(*leaves, **options, backend="triton")
        got = (out, *torch.autograd.grad(out, leaves, dout))

    exact = _reference(q, k, v, weight, bias, dout, options, blocks, torch.float32)
    low = _reference(q, k, v, weight, bias, dout, options, blocks, dtype)
    names = ("out", "dq", "dk", "dv", "dweight", "dbias")
    errors = {
        n: [_max_err(g, e), _max_err(lo, e), e.abs().max().item()] for n, g, lo, e in zip(names, got, low, exact)
    }
    unwritten = [n for n, g in zip(names, got) if not torch.isfinite(g).all()]
    return {"case": name, "seed": seed, "errors": errors, "unwritten": unwritten}


def _reference(q, k, v, weight, bias, dout, options, blocks, dtype):
    """The reference's output and gradients with every input and intermediate in ``dtype``."""
    inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v, weight, bias)]
    out = sparse_linear_attention_reference(*inputs, **options, blocks=blocks, compute_dtype=dtype)
    return (out, *torch.autograd.grad(out, inputs, dout.to(dtype)))


def _max_err(x, ref):
    return (x.float() - ref.float()).abs().max().item()


def main(names):
    from lite3r.sla import kernels

    # Proves TRITON_INTERPRET took effect: kernels decorated under it are InterpretedFunction objects.
    print(json.dumps({"kernel_type": type(kernels.forward_kernel).__name__}), flush=True)
    _patch_interpreter_bf16_dot()
    for name in names or CASES:
        print(json.dumps(run_case(name, **CASES[name])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
