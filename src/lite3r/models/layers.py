"""Transformer building blocks shared by the DINOv2 patch embed, the aggregator and the camera head.

Parameter names (``norm1``, ``attn``, ``ls1``, ``mlp.fc1`` ...) are those of the official VGGT/DINOv2 code so
that official checkpoints load unchanged. Every block attends through :class:`lite3r.models.attention.Attention`,
whose ``core`` is the one place to swap the attention algorithm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lite3r.models.attention import Attention


class Mlp(nn.Module):
    """Two-layer perceptron with exact GELU (``fc1 -> GELU -> fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``gamma`` (CaiT); VGGT initialises it to 0.01, DINOv2 to 1."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: nn.Module | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, rope: RopeTable | None = None, frames: int | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope, frames=frames))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(
    owner: nn.Module, block: Block, x: torch.Tensor, rope: RopeTable | None = None, frames: int | None = None
) -> torch.Tensor:
    """``block(x, rope=rope, frames=frames)``, recomputed in the backward pass instead of storing its activations
    while ``owner.grad_checkpointing`` is on, ``owner`` is training and gradients are enabled."""
    if owner.grad_checkpointing and owner.training and torch.is_grad_enabled():
        return checkpoint(block, x, rope, frames, use_reentrant=False)
    return block(x, rope=rope, frames=frames)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``[N, 3, H, W] -> [N, (H/p)*(W/p), dim]``."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class RopeTable(NamedTuple):
    """Cosines and sines ``[B, 1, N, D]`` (float32) of a rotary embedding's angles, for ``B`` sequences of ``N``
    tokens and heads of ``D`` channels (``B`` is 1 where every sequence has the same positions)."""

    cos: torch.Tensor
    sin: torch.Tensor


class RotaryPositionEmbedding2D(nn.Module):
    """Axial 2D rotary position embedding: the first half of each head's channels rotates with the token's
    row, the second half with its column.

    The model computes one :class:`RopeTable` per forward (:meth:`table`) and every block applies it
    (:meth:`forward`). Computing the angles inside each block instead would be recomputed for every element of
    ``q`` and ``k``: Inductor inlines cheap pointwise producers into their consumers, so the trigonometry ran
    per head and frame in every block (profile of the H200 runtime, 2026-11-30: the three kernels with ``cos``
    took 29 of 290 ms at 32 frames). The values are those of the official table lookup in float32: the same
    angles, cosines and sines, cast to the activations' dtype where applied.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency

    def table(self, pos: torch.Tensor, head_dim: int) -> RopeTable:
        """``pos``: ``[B, N, 2]`` integer (row, col) positions -> the table for heads of ``head_dim`` channels."""
        half = head_dim // 2
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, half, 2, device=pos.device).float() / half))
        angles = []
        for axis in (0, 1):  # rows rotate the first half of the channels, columns the second
            axis_angles = pos[..., axis].float()[..., None] * inv_freq
            angles += [axis_angles, axis_angles]
        angles = torch.cat(angles, dim=-1)[:, None]  # [B, 1, N, head_dim], broadcast over heads
        return RopeTable(angles.cos(), angles.sin())

    def view_and_scene_tables(self, pos: torch.Tensor, views: int, head_dim: int) -> tuple[RopeTable, RopeTable]:
        """Tables for per-view blocks (``pos [1, N, 2]``, one row every view shares) and for cross-view blocks
        (the ``views`` views' tokens in one sequence: the same rows ``views`` times over, repeated, not
        recomputed)."""
        view = self.table(pos, head_dim)
        return view, RopeTable(*(t.repeat(1, 1, views, 1) for t in view))

    def forward(self, x: torch.Tensor, table: RopeTable) -> torch.Tensor:
        """``x``: ``[B, heads, N, D]`` rotated by ``table`` (its ``B`` is ``x``'s or 1)."""
        rows, cols = x.chunk(2, dim=-1)
        rotated = torch.cat((*_half_turn(rows), *_half_turn(cols)), dim=-1)
        return x * table.cos.to(x.dtype) + rotated * table.sin.to(x.dtype)


def _half_turn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    first, second = x.chunk(2, dim=-1)
    return -second, first


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device: torch.device) -> torch.Tensor:
    """RoPE positions ``[batch, num_special + grid_h*grid_w, 2]``: special tokens sit at (0, 0), patch
    ``(r, c)`` at ``(r+1, c+1)`` so that no patch shares the special tokens' position."""
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )
    grid = torch.stack((rows, cols), dim=-1).reshape(-1, 2) + 1
    special = grid.new_zeros(num_special, 2)
    return torch.cat((special, grid)).expand(batch, -1, -1)
