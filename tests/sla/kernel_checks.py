"""Shared checks of the SLA Triton kernels against the reference (CPU interpreter and CUDA alike).

``run_case`` runs the registered op with ``backend="triton"`` forward and backward, with outputs allocated
poisoned (NaN) so an element no kernel writes shows up, and measures against the float32 reference on the same
block map. ``violations`` applies flash-attention's rule: the kernel's max error against the float32 reference
stays within twice the error of the same reference computed in the input dtype, plus one rounding step of the
input dtype at the tensor's largest magnitude (proj_lin's gradients are float32 sums of bf16-rounded linear
outputs whose rounding is shared by a block's rows, so they need that step too). Inputs are random draws with a
fixed seed per case (derived from its name, and reported), so every run checks the same numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib

import torch

from lite3r.sla.op import sparse_linear_attention
from lite3r.sla.reference import block_map, sparse_linear_attention_reference

OUTPUTS = ("out", "dq", "dk", "dv", "dweight", "dbias")

CASES = {
    "bf16-softmax-64x64": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=200),
    "fp16-elu-128x64": dict(dtype=torch.float16, feature_map="elu", block_q=128, block_k=64, length=300, batch=1),
    "bf16-relu-64x128": dict(dtype=torch.bfloat16, feature_map="relu", block_q=64, block_k=128, length=270, batch=1),
    "bf16-softmax-d128": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=150,
                              head_dim=128, batch=1),
    "bf16-softmax-strided": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=180,
                                 strided=True, batch=1, heads=2),
    # 8-bit Q K^T (forward only), keys with a shared channel offset as smoothing meets it in trained models
    "bf16-qk-int8-strided": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64, length=200,
                                 strided=True, heads=2, qk_codes="int8"),
    "fp16-qk-fp8-elu-128x64": dict(dtype=torch.float16, feature_map="elu", block_q=128, block_k=64, length=300,
                                   batch=1, qk_codes="fp8"),
    # every block critical: each row's LUT ends with the partial block, the one step the forward masks
    "bf16-softmax-all-critical": dict(dtype=torch.bfloat16, feature_map="softmax", block_q=64, block_k=64,
                                      length=230, batch=1, heads=2, kh=1.0, kl=0.0),
}


@contextlib.contextmanager
def poisoned_allocations():
    """Make torch.empty / empty_like return NaN-filled floats (-1 for integers) while the kernels run."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(x):
        return x.fill_(float("nan") if x.is_floating_point() else -1)

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def _inputs(batch, heads, length, head_dim, dtype, strided, device):
    if strided:  # q, k, v as views of one qkv projection, and a transposed dout, as inside Attention
        qkv = torch.randn(batch, length, 3, heads, head_dim, device=device, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dout = torch.randn(batch, length, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
    else:
        q, k, v, dout = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(4))
    return q, k, v, dout


def _reference(inputs, dout, options, blocks, dtype, qk_codes=None):
    """The reference's output and gradients (output only with ``qk_codes``) with every input and intermediate in
    ``dtype``."""
    if qk_codes:
        return (sparse_linear_attention_reference(*inputs, **options, blocks=blocks, compute_dtype=dtype,
                                                  qk_codes=qk_codes),)
    leaves = [x.detach().to(dtype).requires_grad_() for x in inputs]
    out = sparse_linear_attention_reference(*leaves, **options, blocks=blocks, compute_dtype=dtype)
    return (out, *torch.autograd.grad(out, leaves, dout.to(dtype)))


def run_case(name, dtype, feature_map, block_q, block_k, length, head_dim=64, batch=2, heads=1, strided=False,
             kh=0.25, kl=0.34, qk_codes=None, device="cpu"):
    """Errors of the Triton path; the default kh, kl give 3-5 key blocks every class (critical, marginal,
    negligible) at the CASES' lengths. ``qk_codes``: the quantized Q K^T variant's output against the exact
    float32 reference, its baseline being the reference with the same 8-bit scores in ``dtype`` (the rule's
    "input precision")."""
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    q, k, v, dout = _inputs(batch, heads, length, head_dim, dtype, strided, device)
    if qk_codes:
        k = k + 4 * torch.randn(head_dim, device=device, dtype=dtype)
    weight = torch.randn(head_dim, head_dim, device=device) / head_dim**0.5
    bias = torch.randn(head_dim, device=device)
    inputs = (q, k, v, weight, bias)
    options = dict(kh=kh, kl=kl, block_q=block_q, block_k=block_k, feature_map=feature_map)
    blocks = block_map(q, k, kh, kl, block_q, block_k)

    with poisoned_allocations():
        if qk_codes:
            with torch.no_grad():
                got = (sparse_linear_attention(*inputs, **options, backend="triton", qk_codes=qk_codes),)
        else:
            leaves = [x.detach().requires_grad_() for x in inputs]
            out = sparse_linear_attention(*leaves, **options, backend="triton")
            got = (out, *torch.autograd.grad(out, leaves, dout))
    exact = _reference(inputs, dout, options, blocks, torch.float32)
    low = _reference(inputs, dout, options, blocks, dtype, qk_codes)
    errors = {
        n: [_max_err(g, e), _max_err(lo, e), e.abs().max().item()] for n, g, lo, e in zip(OUTPUTS, got, low, exact)
    }
    unwritten = [n for n, g in zip(OUTPUTS, got) if not torch.isfinite(g).all()]
    return {"case": name, "seed": seed, "errors": errors, "unwritten": unwritten}


def classify_mismatches(device="cpu") -> int:
    """Rows where the classification kernel and ``reference.classify_blocks`` disagree, over random scores,
    softmax-like ones (what the model feeds it), and scores full of ties (-0.0 against 0.0, a row of equal
    scores, a row of zeros of both signs), at several key-block counts, reading each row at once and in chunks
    of 32 key blocks (how an exported graph with a dynamic frame count runs it)."""
    from lite3r.sla import kernels
    from lite3r.sla.reference import classify_blocks

    torch.manual_seed(0)
    mismatches = 0
    for num_kblocks, kh, kl in ((1, 0.2, 0.3), (3, 0.2, 0.3), (37, 0.2, 0.3), (130, 0.2, 0.3), (300, 0.05, 0.1),
                                (37, 1.0, 0.0), (37, 0.0, 1.0), (37, 0.0, 0.0)):  # fmt: skip
        random_scores = torch.randn(1, 2, 2, num_kblocks, device=device)
        tied = torch.randint(-2, 3, (1, 2, 2, num_kblocks), device=device).float() * 0.5
        tied[tied == 0] = torch.tensor(-0.0)
        tied[0, 1, 0] = 0.25
        tied[0, 1, 1] = torch.where(torch.rand(num_kblocks, device=device) < 0.5, 0.0, -0.0)
        softmax = (random_scores * 4).softmax(-1)
        for scores, chunk in itertools.product((random_scores, tied, softmax), (None, 32)):
            got, marginal = kernels.classify(scores, kh, kl, torch.float32, chunk=chunk)
            want = classify_blocks(scores, kh, kl)
            same = (got.classes == want.classes).all(-1) & (got.critical == want.critical).all(-1)
            same &= (marginal[..., :num_kblocks].view(want.classes.shape) == (want.classes == 0)).all(-1)
            mismatches += int((~same).sum())
    return mismatches


def _max_err(x, ref):
    return (x.float() - ref.float()).abs().max().item()


def violations(result: dict) -> list[str]:
    """Tensors of one ``run_case`` result that break the tolerance rule (module docstring)."""
    input_dtype = torch.float16 if result["case"].startswith("fp16") else torch.bfloat16
    failures = []
    for tensor, (kernel_err, low_err, scale) in result["errors"].items():
        bound = 2 * low_err + torch.finfo(input_dtype).eps * scale
        if not kernel_err <= bound:
            failures.append(f"{result['case']} (seed {result['seed']}) {tensor}: {kernel_err:.3g} > {bound:.3g}")
    return failures
