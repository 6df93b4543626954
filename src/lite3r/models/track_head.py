"""VGGT track head: parameters only.

The official checkpoint carries a point-tracking head (a DPT feature extractor plus a CoTracker-style
iterative predictor). ``VGGT.forward`` never calls it without query points, and lite3r's deployment path
(SLA, FP8, ONNX, TensorRT) does not track. The modules below exist so that official checkpoints load with
``strict=True`` and can be written back unchanged; running them raises ``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lite3r.models.heads import DPTHead
from lite3r.models.layers import Mlp


class TrackHead(nn.Module):
    """Official ``TrackHead`` layout: ``feature_extractor`` (DPT, features only, half resolution) + ``tracker``."""

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        features: int = 128,
        hidden_size: int = 384,
        depth: int = 6,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layers: Sequence[int] = (4, 11, 17, 23),
    ) -> None:
        super().__init__()
        self.feature_extractor = DPTHead(
            dim_in,
            patch_size,
            features=features,
            out_channels=out_channels,
            layers=layers,
            pos_embed=False,
            feature_only=True,
            down_ratio=2,
        )
        self.tracker = _TrackerPredictor(features, hidden_size, depth)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "tracking is not implemented in lite3r; its weights are kept only so that official checkpoints load "
            "strictly. Use the official facebookresearch/vggt TrackHead with these weights to track points."
        )


class _TrackerPredictor(nn.Module):
    """Parameter layout of the official ``BaseTrackerPredictor`` (stride 2, 7 correlation levels, radius 4)."""

    def __init__(self, latent_dim: int, hidden_size: int, depth: int, corr_levels: int = 7, corr_radius: int = 4):
        super().__init__()
        transformer_dim = 3 * latent_dim + 4  # flow embedding, correlations, track features, raw flows
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, transformer_dim))
        self.updateformer = _UpdateFormer(transformer_dim, hidden_size, latent_dim + 2, depth)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))


class _UpdateFormer(nn.Module):
    """Parameter layout of the official ``EfficientUpdateFormer`` (8 heads, 64 virtual tracks).

    ``virual_tracks`` is misspelt as in the official state dict.
    """

    def __init__(self, input_dim: int, hidden_size: int, output_dim: int, depth: int, num_virtual_tracks: int = 64):
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        self.time_blocks = nn.ModuleList(_SelfAttentionBlock(hidden_size) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(_SelfAttentionBlock(hidden_size) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(_CrossAttentionBlock(hidden_size) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(_CrossAttentionBlock(hidden_size) for _ in range(depth))


class _SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, 4 * dim)


class _CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, 4 * dim)
