"""Depth-Anything-3 heads: DualDPT (depth + auxiliary rays), the camera decoder and the camera encoder.

Module and parameter names follow ByteDance-Seed/Depth-Anything-3 (``scratch.refinenet1_aux``,
``cam_dec.fc_qvec`` ...) so that the official checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from lite3r.geometry import POSE_ENCODING_SIZE
from lite3r.models.heads import DPTHead, FeatureFusionBlock
from lite3r.models.layers import Block, Mlp

_AUX_HIDDEN = 32  # channels of the final convolutions, fixed in the official code
_RAY_CHANNELS = 7  # 6 ray values + 1 confidence


class DualDPTHead(DPTHead):
    """DA3's DualDPT: the DPT depth branch (depth ``exp``, confidence ``1 + exp``) and an auxiliary ray branch
    with its own fusion blocks.

    Only the depth branch is computed. The official ``DepthAnything3Net.forward`` deletes the ray outputs whenever
    the model has a camera decoder (DA3-Large has one), so they are never part of its result; the ray branch's
    modules exist with the official names and shapes so that the checkpoint loads strictly and saves back.
    Numerically the head differs from VGGT's DPT in two places, both options of :class:`DPTHead`: the residual
    units add ``x`` (not ``relu(x)``) and the uv embedding is computed in float32.
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        features: int = 256,
        out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024),
        layers: tuple[int, int, int, int] = (11, 15, 19, 23),
        aux_levels: int = 4,
    ) -> None:
        super().__init__(
            dim_in,
            patch_size=patch_size,
            output_dim=2,
            activation="exp",
            features=features,
            out_channels=out_channels,
            layers=layers,
            uv_dtype=torch.float32,
            relu_skip=False,
        )
        for i in range(1, 5):
            fusion = FeatureFusionBlock(features, has_residual=i < 4, relu_skip=False)
            setattr(self.scratch, f"refinenet{i}_aux", fusion)
        half = features // 2
        self.scratch.output_conv1_aux = nn.ModuleList(
            nn.Sequential(*(nn.Conv2d(*pair, kernel_size=3, padding=1) for pair in _alternating(features, half, 5)))
            for _ in range(aux_levels)
        )
        # One LayerNorm (over channels) shared by every level: the official code builds it once and unpacks it
        # into each level's layers, so the checkpoint holds one tensor under four names (or, deduplicated, one).
        shared_norm = nn.LayerNorm(_AUX_HIDDEN)
        self.scratch.output_conv2_aux = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(half, _AUX_HIDDEN, kernel_size=3, padding=1),
                _Permute((0, 2, 3, 1)),
                shared_norm,
                _Permute((0, 3, 1, 2)),
                nn.ReLU(),
                nn.Conv2d(_AUX_HIDDEN, _RAY_CHANNELS, kernel_size=1),
            )
            for _ in range(aux_levels)
        )


def _alternating(wide: int, narrow: int, count: int) -> list[tuple[int, int]]:
    """``(in, out)`` channels of ``count`` convolutions alternating wide -> narrow -> wide ..., ending narrow."""
    sizes = [wide if i % 2 == 0 else narrow for i in range(count + 1)]
    return list(zip(sizes[:-1], sizes[1:]))


class _Permute(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CameraDecoder(nn.Module):
    """Pose encoding ``[B, S, 9]`` (translation, xyzw quaternion, fov_h, fov_w) from each view's camera token of
    the last output layer: a two-layer ReLU MLP, then linear translation and quaternion and a ReLU field of view.
    The encoding describes camera-to-world transforms; the reference view's is close to the identity."""

    def __init__(self, dim_in: int = 2048) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU())
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, camera_tokens: torch.Tensor) -> torch.Tensor:
        B, S = camera_tokens.shape[:2]
        # The backbone may run in another dtype than the decoder (bf16 backbone, float32 heads).
        feat = self.backbone(camera_tokens.reshape(B * S, -1).to(self.fc_t.weight.dtype))
        pose_enc = torch.cat((self.fc_t(feat), self.fc_qvec(feat), self.fc_fov(feat)), dim=-1)
        return pose_enc.reshape(B, S, POSE_ENCODING_SIZE)


class CameraEncoder(nn.Module):
    """Parameters of DA3's camera encoder, which turns known cameras into camera tokens (pose-conditioned
    reconstruction). lite3r reconstructs from images alone, so calling it raises; the modules exist with the
    official names and shapes so that the checkpoint loads strictly and saves back."""

    def __init__(
        self, dim_out: int = 1024, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            *(Block(dim_out, num_heads, mlp_ratio, init_values=0.01) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim_out)
        self.trunk_norm = nn.LayerNorm(dim_out)
        self.pose_branch = Mlp(POSE_ENCODING_SIZE, dim_out // 2, dim_out)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "DA3's camera-conditioned mode (known extrinsics/intrinsics as input) is not implemented in lite3r; "
            "model(images) reconstructs from the images alone"
        )
