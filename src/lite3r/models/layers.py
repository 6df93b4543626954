"""Transformer building blocks shared by the DINOv2 patch embed, the aggregator and the camera head.

Parameter names (``norm1``, ``attn``, ``ls1``, ``mlp.fc1`` ...) are those of the official VGGT/DINOv2 code so
that official checkpoints load unchanged. Every block attends through :class:`lite3r.models.attention.Attention`,
whose ``core`` is the one place to swap the attention algorithm.
"""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(owner: nn.Module, block: Block, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``block(x, pos=pos)``, recomputed in the backward pass instead of storing its activations while
    ``owner.grad_checkpointing`` is on, ``owner`` is training and gradients are enabled."""
    if owner.grad_checkpointing and owner.training and torch.is_grad_enabled():
        return checkpoint(block, x, pos, use_reentrant=False)
    return block(x, pos=pos)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``[N, 3, H, W] -> [N, (H/p)*(W/p), dim]``."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class RotaryPositionEmbedding2D(nn.Module):
    """Axial 2D rotary position embedding: the first half of each head's channels rotates with the token's
    row, the second half with its column.

    Angles are computed from ``pos`` on every call rather than looked up in a cached table: the result is
    bit-identical to the official table lookup in float32, and it has no data-dependent shapes, so it traces
    and exports cleanly.
    """

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, heads, N, D]``; ``pos``: ``[B, N, 2]`` integer (row, col)."""
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat((self._rotate(rows, pos[..., 0]), self._rotate(cols, pos[..., 1])), dim=-1)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=x.device).float() / dim))
        angles = positions.float()[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, N, dim], broadcast over heads
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat((-second, first), dim=-1)
        return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device: torch.device) -> torch.Tensor:
    """RoPE positions ``[batch, num_special + grid_h*grid_w, 2]``: special tokens sit at (0, 0), patch
    ``(r, c)`` at ``(r+1, c+1)`` so that no patch shares the special tokens' position."""
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
    )
    grid = torch.stack((rows, cols), dim=-1).reshape(-1, 2) + 1
    special = grid.new_zeros(num_special, 2)
    return torch.cat((special, grid)).expand(batch, -1, -1)
