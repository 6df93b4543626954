"""DINOv2 ViT with register tokens, used by VGGT as its patch embedding (``aggregator.patch_embed``).

Only what VGGT reads is computed: the normalised patch tokens. The class token, the register tokens and the
(unused) ``mask_token`` still exist because they are part of the official state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lite3r.models.layers import Block, PatchEmbed, run_block


class DinoVisionTransformer(nn.Module):
    """ViT-L/14 with 4 registers in VGGT; ``img_size`` only sets the size of the learned position table,
    which is resized (bicubic, antialiased, as in the official code) for every other input size."""

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.grad_checkpointing = False
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Masked-image-modelling token from DINOv2 pre-training: never used by VGGT, kept for strict loading.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: the patch convolution's input must have it (no autocast)."""
        return self.patch_embed.proj.weight.dtype

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position table ``[1, 1 + grid_h*grid_w, C]`` (class token first) for a ``grid_h x grid_w`` patch grid."""
        return resize_position_table(self.pos_embed, grid_h, grid_w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` (already normalised) -> normalised patch tokens ``[N, (H/p)*(W/p), C]``."""
        n, _, h, w = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = x + self.position_embedding(h // self.patch_size, w // self.patch_size)
        x = torch.cat((x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = run_block(self, block, x)
        return self.norm(x[:, 1 + self.num_register_tokens :])


def resize_position_table(
    pos_embed: torch.Tensor, grid_h: int, grid_w: int, interpolate_offset: float | None = None
) -> torch.Tensor:
    """A learned ``[1, 1 + M*M, C]`` table (class token first) resized bicubically to a ``grid_h x grid_w`` grid.

    The two official DINOv2 variants differ here, and the released weights were trained with their own:
    ``interpolate_offset=None`` (VGGT) resizes to the target size with antialiasing; a float (DA3: 0.1) passes the
    scale factors ``(grid + offset) / M`` instead, without antialiasing (the kernel maps coordinates with them).
    """
    side = int((pos_embed.shape[1] - 1) ** 0.5)
    if (grid_h, grid_w) == (side, side):
        return pos_embed
    table = pos_embed.float()
    patch_table = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if interpolate_offset is None:
        patch_table = F.interpolate(patch_table, size=(grid_h, grid_w), mode="bicubic", antialias=True)
    else:
        scale = ((grid_h + interpolate_offset) / side, (grid_w + interpolate_offset) / side)
        patch_table = F.interpolate(patch_table, scale_factor=scale, mode="bicubic", antialias=False)
    patch_table = patch_table.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat((table[:, :1], patch_table), dim=1).to(pos_embed.dtype)
