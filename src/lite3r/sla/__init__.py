"""Sparse-Linear Attention (SLA): the reference, the Triton kernels behind one registered op, the attention core
and ``convert_to_sla``. Importing this package registers ``torch.ops.lite3r.sparse_linear_attention``; the
Triton kernels are imported only when they run."""

from __future__ import annotations

from lite3r.sla.convert import convert_to_sla, restore_dense_attention
from lite3r.sla.module import SparseLinearAttention
from lite3r.sla.op import sparse_linear_attention
from lite3r.sla.reference import BlockMap, block_map, sparse_linear_attention_reference

__all__ = [
    "BlockMap",
    "SparseLinearAttention",
    "block_map",
    "convert_to_sla",
    "restore_dense_attention",
    "sparse_linear_attention",
    "sparse_linear_attention_reference",
]
