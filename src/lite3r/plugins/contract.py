"""The SLA core plugin's contract as plain data: the op, the dtypes of its inputs, the head dims it runs.

No Triton and no TensorRT here, so the exporter can type its ``SparseLinearAttentionCore`` nodes from the same
table that the AOT kernel compiles for (``sla_kernel``) and the TensorRT registration declares
(``tensorrt_sla``). Dtypes use Triton's spellings (``"fp16"``, ``"bf16"``, ``"fp32"``, ``"i32"``).
"""

from __future__ import annotations

NAMESPACE = "lite3r"
CORE_OP = "SparseLinearAttentionCore"
IO_DTYPES = ("fp16", "bf16")  # q, k, v and the output
HEAD_DIMS = (64, 128)  # what lite3r.sla.kernels.forward_kernel supports
# Inputs in node order with their element types: "io" follows q's dtype, "state" is the linear-branch state
# dtype of lite3r.sla.kernels (STATE_DTYPES).
INPUTS = (
    ("q", "io"), ("k", "io"), ("v", "io"), ("proj_w", "fp32"), ("proj_b", "fp32"),
    ("lut", "i32"), ("kv_state", "state"), ("k_state", "fp32"),
)  # fmt: skip
# bf16 I/O keeps the marginal sums S_j in bf16 (tensor-core GEMMs); fp16 could overflow on them, so fp32.
STATE_DTYPES = {"bf16": "bf16", "fp16": "fp32"}


def dtypes(io: str) -> dict[str, str]:
    """The element type of every core input and of ``out`` when q, k, v are ``io`` (one of ``IO_DTYPES``)."""
    if io not in IO_DTYPES:
        raise ValueError(f"SLA plugin dtype must be one of {IO_DTYPES}; got {io!r}")
    kinds = {"io": io, "state": STATE_DTYPES[io]}
    return {name: kinds.get(kind, kind) for name, kind in INPUTS} | {"out": io}


def unsupported(io: str, head_dim: int) -> str | None:
    """Why the plugin cannot run an SLA core with q of dtype ``io`` and head dim ``head_dim``, or None."""
    if io not in IO_DTYPES:
        return f"{io} q, k, v; the plugin takes {' or '.join(IO_DTYPES)}"
    if head_dim not in HEAD_DIMS:
        return f"head dim {head_dim}; the plugin takes {' or '.join(map(str, HEAD_DIMS))}"
    return None
