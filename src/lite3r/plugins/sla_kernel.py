"""The SLA plugin kernel: ``lite3r.sla.kernels.forward_kernel`` compiled ahead of time for TensorRT.

``forward_kernel`` is SLA's fused step (online softmax over the critical key blocks plus ``proj_lin`` of the
linear branch); it reads the block map (LUT) and the marginal key states that the steps before it produce.
The plugin op ``lite3r::SparseLinearAttentionCore`` is exactly that step, so the entry kernel below only
re-orders arguments into TensorRT's AOT calling convention (inputs, int32 extra arguments, outputs), derives
the strides of the contiguous ``[B, H, L, D]`` tensors, and fixes the float arguments as compile-time
constants (TensorRT passes int32 extra arguments only). docs/deploy.md has the op's contract.

Launch geometry (``grid``, ``extra_args``) is written once, over plain ints or TensorRT shape expressions, so
the plugin and scripts/check_plugin_ptx_gpu.py launch the kernel the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import triton
import triton.language as tl

from lite3r.plugins.contract import HEAD_DIMS, INPUTS, IO_DTYPES, dtypes
from lite3r.plugins.triton_aot import CompiledKernel, KernelArg, compile_for_plugin
from lite3r.sla import kernels
from lite3r.sla.reference import BLOCK_SIZES, FEATURE_MAPS, LINEAR_EPS

EXTRA_ARGS = ("num_heads", "seq_len", "num_critical")
OUTPUTS = ("out",)
KERNEL_ARGS = (
    *(KernelArg(name, "ptr") for name, _ in INPUTS),
    *(KernelArg(name, "i32") for name in EXTRA_ARGS),
    *(KernelArg(name, "ptr") for name in OUTPUTS),
)


@triton.jit
def sparse_linear_attention_core(
    q, k, v, proj_w, proj_b, lut, kv_state, k_state,
    num_heads, seq_len, num_critical,
    out,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    SM_SCALE: tl.constexpr, EPS: tl.constexpr,
):  # fmt: skip
    """TensorRT entry point: contiguous ``[B, H, L, D]`` tensors, grid ``(cdiv(L, BLOCK_Q), B * H)``."""
    stride_h = seq_len * HEAD_DIM
    stride_b = num_heads * stride_h
    kernels.forward_kernel(
        q, k, v, out, lut, kv_state, k_state, proj_w, proj_b, q, q, k, k,  # 16-bit scores: no codes
        stride_b, stride_h, HEAD_DIM, stride_b, stride_h, HEAD_DIM,
        stride_b, stride_h, HEAD_DIM, stride_b, stride_h, HEAD_DIM,
        num_heads, seq_len, num_critical, SM_SCALE, EPS,
        HEAD_DIM, BLOCK_Q, BLOCK_K, FEATURE_MAP, False,
    )  # fmt: skip


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def grid(q_shape: Sequence[Any], block_q: int, cdiv: Callable[[Any, int], Any] = _ceil_div) -> tuple[Any, Any]:
    """``(cdiv(L, block_q), B * H)`` for ``q_shape = (B, H, L, D)`` of ints or TensorRT shape expressions."""
    batch, heads, length, _ = q_shape
    return cdiv(length, block_q), batch * heads


def extra_args(q_shape: Sequence[Any], lut_shape: Sequence[Any]) -> tuple[Any, Any, Any]:
    """``(num_heads, seq_len, num_critical)``, the int32 arguments TensorRT passes after the inputs."""
    return q_shape[1], q_shape[2], lut_shape[3]


def compile_sla_kernel(
    dtype: str = "bf16",
    head_dim: int = 64,
    block_q: int = 64,
    block_k: int = 64,
    *,
    feature_map: str = "softmax",
    scale: float | None = None,
    target: str | int = "sm_90",
    ptx_version: int | None = None,
) -> CompiledKernel:
    """PTX of the SLA core for one configuration, with its exact launch argument list.

    ``dtype`` is that of q, k, v and the output (``"bf16"`` or ``"fp16"``); ``scale`` defaults to
    ``head_dim ** -0.5``. Raises ``ValueError`` for a configuration the kernel does not support.
    """
    if dtype not in IO_DTYPES:
        raise ValueError(f"SLA plugin dtype must be one of {IO_DTYPES}; got {dtype!r}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"SLA plugin head_dim must be one of {HEAD_DIMS}; got {head_dim}")
    if block_q not in BLOCK_SIZES or block_k not in BLOCK_SIZES:
        raise ValueError(f"SLA block sizes must be in {BLOCK_SIZES}; got block_q={block_q}, block_k={block_k}")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"SLA feature_map must be one of {FEATURE_MAPS}; got {feature_map!r}")
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_Q": block_q,
        "BLOCK_K": block_k,
        "FEATURE_MAP": FEATURE_MAPS.index(feature_map),
        "SM_SCALE": float(head_dim**-0.5 if scale is None else scale),
        "EPS": LINEAR_EPS,
    }
    return compile_for_plugin(
        sparse_linear_attention_core,
        KERNEL_ARGS,
        dtypes(dtype),
        constexprs,
        target=target,
        ptx_version=ptx_version,
        **kernels._launch_options(head_dim, block_q),
    )
