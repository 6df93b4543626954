"""VGGT aggregator: DINOv2 patch tokens plus camera/register tokens, then alternating frame and global attention.

Frame blocks attend within each frame (``[B*S, P, C]``), global blocks across all frames of a scene
(``[B, S*P, C]``). Layer ``i``'s output is the concatenation of frame block ``i`` and global block ``i``
outputs, ``[B, S, P, 2C]``.

Memory: the official code keeps all 24 layer outputs although the heads read only five (DPT: 4, 11, 17, 23;
camera: the last). ``keep_layers`` keeps just those; ``keep_layers=None`` restores keep-everything.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lite3r.models._base import ImageNormalization
from lite3r.models.dinov2 import DinoVisionTransformer
from lite3r.models.layers import Block, RotaryPositionEmbedding2D, patch_positions, run_block


class Aggregator(nn.Module):
    """Alternating-attention trunk of VGGT (24 frame + 24 global blocks in VGGT-1B).

    ``forward`` returns ``{layer_index: [B, S, P, 2C]}`` for the layers in ``keep_layers`` (all when ``None``);
    tokens are ordered camera (1), registers (``num_register_tokens``), patches (from ``patch_start_idx``).
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
        dinov2_depth: int = 24,
        dinov2_num_heads: int = 16,
        keep_layers: Iterable[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_start_idx = 1 + num_register_tokens
        self.keep_layers = None if keep_layers is None else frozenset(keep_layers)
        self.grad_checkpointing = False
        self.normalize = ImageNormalization()
        self.patch_embed = DinoVisionTransformer(
            img_size, patch_size, embed_dim, dinov2_depth, dinov2_num_heads, mlp_ratio, num_register_tokens
        )
        self.rope = RotaryPositionEmbedding2D(rope_freq)
        self.frame_blocks = self._make_blocks(embed_dim, depth, num_heads, mlp_ratio, init_values)
        self.global_blocks = self._make_blocks(embed_dim, depth, num_heads, mlp_ratio, init_values)
        # Index 0: the first frame (the reference camera), index 1: every other frame.
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)

    def _make_blocks(self, dim: int, depth: int, heads: int, mlp_ratio: float, init_values: float) -> nn.ModuleList:
        return nn.ModuleList(
            Block(dim, heads, mlp_ratio, init_values=init_values, qk_norm=True, rope=self.rope) for _ in range(depth)
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block (DINOv2, frame, global) in the backward pass instead of storing activations."""
        self.grad_checkpointing = enable
        self.patch_embed.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """``images``: ``[B, S, 3, H, W]`` in ``[0, 1]``."""
        B, S, _, H, W = images.shape
        # Normalised in float32, then in the trunk's own dtype (bf16 weights take bf16 input; under autocast
        # with float32 weights this is float32 and the convolution autocasts, as in the official model).
        pixels = self.normalize(images).to(self.patch_embed.dtype)
        patches = self.patch_embed(pixels.reshape(B * S, 3, H, W))
        special = torch.cat((_per_frame(self.camera_token, B, S), _per_frame(self.register_token, B, S)), dim=1)
        tokens = torch.cat((special, patches), dim=1)
        P, C = tokens.shape[1:]
        # Every frame has the same positions: one table serves the frame blocks, S copies the global ones.
        pos = patch_positions(1, H // self.patch_size, W // self.patch_size, self.patch_start_idx, images.device)
        frame_rope, global_rope = self.rope.view_and_scene_tables(pos, S, self.frame_blocks[0].attn.head_dim)

        outputs = {}
        for i, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            frame_tokens = run_block(self, frame_block, tokens.reshape(B * S, P, C), frame_rope)
            tokens = run_block(self, global_block, frame_tokens.reshape(B, S * P, C), global_rope, frames=S)
            if self.keep_layers is None or i in self.keep_layers:
                outputs[i] = torch.cat((frame_tokens.reshape(B, S, P, C), tokens.reshape(B, S, P, C)), dim=-1)
        return outputs


def _per_frame(token: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """``[1, 2, X, C]`` learned tokens -> ``[B*S, X, C]``: variant 0 for each scene's first frame, 1 for the rest."""
    first = token[:, :1].expand(B, 1, *token.shape[2:])
    others = token[:, 1:].expand(B, S - 1, *token.shape[2:])
    return torch.cat((first, others), dim=1).reshape(B * S, *token.shape[2:])
