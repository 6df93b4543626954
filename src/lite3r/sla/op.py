"""``lite3r::sparse_linear_attention``: SLA as one registered PyTorch op.

``torch.compile`` and ``torch.export`` see a single node (the ONNX exporter maps it to one custom node), with a
registered autograd formula. The op has one output; its backward (``lite3r::sparse_linear_attention_backward``,
also registered so compiled backward graphs trace it) recomputes the block map, the linear-branch states and
the softmax statistics instead of saving them.

The forward is a ``torch.library.triton_op``: its body is traceable (Triton launches through
``torch.library.wrap_triton``, the reference's torch ops elsewhere); its fake implementation only gives the shape.
``torch.export`` keeps the one node; ``ExportedProgram.run_decompositions(decompose_custom_triton_ops=True)``
and Inductor replace it by the body, so an AOTInductor package compiles the kernels in and runs without lite3r.

Dispatch: Triton kernels for CUDA fp16/bf16 with head dim 64 or 128, the PyTorch reference elsewhere.
``backend="triton"|"reference"`` forces one; with ``"auto"``, the ``LITE3R_SLA_BACKEND`` environment variable
may force one too (tests).
"""

from __future__ import annotations

import functools
import os

import torch

from torch._library.triton import set_wrap_triton_enabled

from lite3r.sla import reference

BACKENDS = ("auto", "triton", "reference")
BACKEND_ENV = "LITE3R_SLA_BACKEND"
TRITON_DTYPES = (torch.float16, torch.bfloat16)
TRITON_HEAD_DIMS = (64, 128)


def _check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")


def check_options(kh: float, kl: float, block_q: int, block_k: int, feature_map: str, backend: str) -> None:
    """``reference.check_options`` plus the backend name: every SLA option, checked before any work starts."""
    reference.check_options(kh, kl, block_q, block_k, feature_map)
    _check_backend_name(backend)


def _reference(kh: float, kl: float, block_q: int, block_k: int, feature_map: str):
    """The reference as a function of ``(q, k, v, weight, bias)`` alone."""
    return functools.partial(
        reference.sparse_linear_attention_reference, kh=kh, kl=kl, block_q=block_q, block_k=block_k,
        feature_map=feature_map,
    )


def _triton_unsupported(q: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on ``q``, or None."""
    if q.dtype not in TRITON_DTYPES:
        return f"dtype {q.dtype} (the kernels take {TRITON_DTYPES})"
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        return f"head dim {q.shape[-1]} (the kernels take {TRITON_HEAD_DIMS})"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors (the kernels need CUDA, or TRITON_INTERPRET=1 for the interpreter)"
    return None


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The backend that runs for ``q``: ``"triton"`` or ``"reference"``."""
    _check_backend_name(backend)
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto")
        _check_backend_name(backend)
    if backend == "auto":
        return "triton" if q.is_cuda and _triton_unsupported(q) is None else "reference"
    if backend == "triton" and (reason := _triton_unsupported(q)):
        raise ValueError(f"backend='triton' cannot run on {reason}; use backend='auto' or 'reference'")
    return backend


def _exact_dtypes(q: torch.Tensor):
    """The op computes in its inputs' dtypes with its own fp32 accumulation: an enclosing autocast must not
    recast its internals (block scores would turn bf16 and change the block map)."""
    return torch.autocast(q.device.type, enabled=False)


def _forward(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend, qk_codes) -> torch.Tensor:
    with _exact_dtypes(q):
        if resolve_backend(backend, q) == "triton":
            from lite3r.sla import kernels

            return kernels.sla_forward(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, qk_codes)
        return _reference(kh, kl, block_q, block_k, feature_map)(q, k, v, weight, bias, qk_codes=qk_codes).contiguous()


@torch.library.triton_op("lite3r::sparse_linear_attention", mutates_args=())
def _sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    kh: float,
    kl: float,
    block_q: int,
    block_k: int,
    feature_map: str,
    backend: str,
) -> torch.Tensor:
    return _forward(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend, qk_codes=None)


@torch.library.triton_op("lite3r::sparse_linear_attention_quantized_qk", mutates_args=())
def _sparse_linear_attention_quantized_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    kh: float,
    kl: float,
    block_q: int,
    block_k: int,
    feature_map: str,
    backend: str,
    qk_codes: str,
) -> torch.Tensor:
    """The quantized Q K^T variant: inference only (no autograd formula), a runtime setting that exports refuse."""
    return _forward(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend, qk_codes)


@_sparse_linear_attention.register_fake
def _(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend):
    # Shape only (triton_op would run the body): torch.export and the ONNX exporter keep the op as one node and
    # need no more; Inductor and AOTInductor still replace the node by the body.
    return q.new_empty(q.shape)


@_sparse_linear_attention_quantized_qk.register_fake
def _(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend, qk_codes):
    return q.new_empty(q.shape)


@torch.library.custom_op("lite3r::sparse_linear_attention_backward", mutates_args=())
def _sparse_linear_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    kh: float,
    kl: float,
    block_q: int,
    block_k: int,
    feature_map: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with _exact_dtypes(q):
        if resolve_backend(backend, q) == "triton":
            from lite3r.sla import kernels

            with set_wrap_triton_enabled(False):  # plain launches, as triton_op does for the eager forward
                return kernels.sla_backward(
                    grad, q, k, v, weight, bias, out, kh, kl, block_q, block_k, feature_map
                )
        # Autograd is switched off inside an op's implementation; functorch's vjp still differentiates.
        _, pullback = torch.func.vjp(_reference(kh, kl, block_q, block_k, feature_map), q, k, v, weight, bias)
        return tuple(g.contiguous() for g in pullback(grad))


@_sparse_linear_attention_backward.register_fake
def _(grad, q, k, v, weight, bias, out, kh, kl, block_q, block_k, feature_map, backend):
    return tuple(x.new_empty(x.shape) for x in (q, k, v, weight, bias))


def _setup_context(ctx, inputs, output):
    q, k, v, weight, bias, *options = inputs
    ctx.save_for_backward(q, k, v, weight, bias, output)
    ctx.options = options


def _backward(ctx, grad):
    grads = torch.ops.lite3r.sparse_linear_attention_backward(grad, *ctx.saved_tensors, *ctx.options)
    return (*grads, *(None for _ in ctx.options))


_sparse_linear_attention.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(q, k, v, weight, bias) -> None:
    if not (q.dim() == 4 and q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must share one shape [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    dim = q.shape[-1]
    if weight.shape != (dim, dim) or bias.shape != (dim,):
        raise ValueError(
            f"proj_lin must be [D, D] weight and [D] bias for head dim D={dim}; "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if len({x.device for x in (q, k, v, weight, bias)}) != 1:
        raise ValueError("q, k, v and proj_lin must be on one device")


def sparse_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    kh: float = 0.05,
    kl: float = 0.10,
    block_q: int = 64,
    block_k: int = 64,
    feature_map: str = "softmax",
    backend: str = "auto",
    qk_codes: str | None = None,
) -> torch.Tensor:
    """SLA of ``q, k, v [B, H, L, D]`` with ``proj_lin`` = (``weight [D, D]``, ``bias [D]``); returns ``[B, H, L, D]``.

    Differentiable in all five tensors, except with ``qk_codes`` (``"int8"`` / ``"fp8"``: scores from 8-bit codes
    of q and smoothed k, inference only). See ``reference.sparse_linear_attention_reference`` for the definition.
    Under autocast, q, k and v run in the autocast dtype, as ``scaled_dot_product_attention`` does (q/k-norm
    leaves q, k in float32 while v comes out of the autocast linear in bf16/fp16).
    """
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    _check_inputs(q, k, v, weight, bias)
    check_options(kh, kl, block_q, block_k, feature_map, backend)
    options = (float(kh), float(kl), block_q, block_k, feature_map, backend)
    if qk_codes is None:
        return torch.ops.lite3r.sparse_linear_attention(q, k, v, weight, bias, *options)
    reference.check_qk_codes(qk_codes)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, weight, bias)):
        raise ValueError(f"qk_codes={qk_codes!r} is inference only (no gradients through 8-bit scores): "
                         "run under torch.no_grad()")
    return torch.ops.lite3r.sparse_linear_attention_quantized_qk(q, k, v, weight, bias, *options, qk_codes)
