"""Multi-head attention with a pluggable core.

Every attention layer in the model computes ``q, k, v`` (with q/k-norm and RoPE applied) and hands them
to ``self.core``; the core returns the attended values. Swapping dense attention for Sparse-Linear
Attention is therefore one assignment, ``block.attn.core = SomeCore(...)``, and the parameter names of
the layer (``qkv``, ``proj``, ``q_norm``, ``k_norm``) stay those of the official checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lite3r.models.layers import RopeTable


class DenseAttentionCore(nn.Module):
    """Exact softmax attention through ``scaled_dot_product_attention``.

    Contract for every core: ``forward(q, k, v, frames=None)`` with ``q, k, v`` of shape ``[B, H, L, D]`` returns
    ``[B, H, L, D]`` in the dtype of ``q``; the softmax scale is ``1/sqrt(D)``. ``frames``: in a cross-view layer,
    how many frames of equal length the L tokens hold (frame after frame); None where the sequence is one frame.
    Dense attention needs no layout and ignores it.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Official VGGT/DINOv2 attention layer (``qkv``, ``q_norm``, ``k_norm``, ``proj``) around a core."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        rope: nn.Module | None = None,
        core: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope
        self.core = core if core is not None else DenseAttentionCore()

    def forward(self, x: torch.Tensor, rope: RopeTable | None = None, frames: int | None = None) -> torch.Tensor:
        """``rope``: the rotary table of ``x``'s tokens (``self.rope.table``), needed when ``self.rope`` is set;
        ``frames``: the frame count of a cross-view layer's tokens, for the core (see DenseAttentionCore)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q = self.rope(q, rope)
            k = self.rope(k, rope)
        x = self.core(q, k, v, frames=frames)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))
