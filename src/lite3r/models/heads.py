"""VGGT prediction heads: camera (iterative pose refinement) and DPT (dense depth / point maps; DA3's DualDPT
builds on it).

Module and parameter names follow the official code so that official checkpoints load with ``strict=True``
(``poseLN_modulation``, ``scratch.refinenet1.resConfUnit2.conv1`` ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lite3r.geometry import POSE_ENCODING_SIZE
from lite3r.models.layers import Block, Mlp


class CameraHead(nn.Module):
    """Predicts ``pose_enc [B, S, 9]`` from each frame's camera token, refined over ``num_iterations`` steps.

    Every step embeds the current estimate (a learned empty pose at first), modulates the normalised camera
    tokens with it (adaLN: shift, scale, gate), runs the trunk (attention across the frames of a scene) and adds
    a predicted delta. Translation and quaternion are linear; the field of view goes through a ReLU.
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        num_iterations: int = 4,
    ) -> None:
        super().__init__()
        self.num_iterations = num_iterations
        self.trunk = nn.Sequential(
            *(Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_SIZE))
        self.embed_pose = nn.Linear(POSE_ENCODING_SIZE, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_SIZE)

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """``tokens``: last aggregator layer ``[B, S, P, C]``. Returns the pose encoding after every iteration."""
        # The trunk may run in another dtype than the head (bf16 trunk, float32 head): convert its tokens here.
        camera_tokens = self.token_norm(tokens[:, :, 0].to(self.token_norm.weight.dtype))
        B, S, _ = camera_tokens.shape
        raw_pose = None
        poses = []
        for _ in range(self.num_iterations):
            if raw_pose is None:
                condition = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                # Each step is trained on its own: no gradient flows into the previous estimate.
                raw_pose = raw_pose.detach()
                condition = self.embed_pose(raw_pose)
            shift, scale, gate = self.poseLN_modulation(condition).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(camera_tokens) * (1 + scale) + shift) + camera_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw_pose = delta if raw_pose is None else raw_pose + delta
            poses.append(torch.cat((raw_pose[..., :7], F.relu(raw_pose[..., 7:])), dim=-1))
        return poses


def inverse_log(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)``: undoes the log-compression the point head was trained to predict."""
    return torch.sign(x) * torch.expm1(x.abs())


_ACTIVATIONS = {"exp": torch.exp, "inv_log": inverse_log}


class DPTHead(nn.Module):
    """Dense Prediction Transformer head over four aggregator layers.

    Each layer's patch tokens become a feature map at 1/14 resolution, are projected and resized to 4x, 2x, 1x
    and 1/2x, fused coarse-to-fine (RefineNet blocks), upsampled to the image size and mapped to
    ``output_dim`` channels: ``output_dim - 1`` values (``activation``) and one confidence (``1 + exp``).
    Frames are processed ``frames_chunk_size`` at a time to bound the memory of the full-resolution maps, except
    under ``torch.export`` (ONNX export), where all frames go through at once.
    ``feature_only`` builds the track head's variant (wider ``output_conv1``, no output convolution).
    Two numerical details differ between the official VGGT and DA3 heads and are options here: the dtype of the
    uv-embedding frequencies (``uv_dtype``: float64 in VGGT, float32 in DA3) and whether the residual units'
    skip adds ``relu(x)`` (VGGT's in-place ReLU) or ``x`` (DA3), see :class:`ResidualConvUnit`.
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layers: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
        uv_dtype: torch.dtype = torch.float64,
        relu_skip: bool = True,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown DPT activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        if len(layers) != 4 or len(out_channels) != 4:
            raise ValueError(
                f"DPT fuses exactly 4 layers; got layers={tuple(layers)}, out_channels={tuple(out_channels)}"
            )
        self.patch_size = patch_size
        self.activation = _ACTIVATIONS[activation]
        self.layers = tuple(layers)
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.uv_dtype = uv_dtype

        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(oc, features, kernel_size=3, padding=1, bias=False))
        for i in range(1, 5):
            fusion = FeatureFusionBlock(features, has_residual=i < 4, relu_skip=relu_skip)
            setattr(self.scratch, f"refinenet{i}", fusion)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, output_dim, kernel_size=1),
            )

    def forward(
        self,
        layers: Mapping[int, torch.Tensor],
        image_size: tuple[int, int],
        patch_start_idx: int,
        frames_chunk_size: int = 8,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``layers[i]``: aggregator outputs ``[B, S, P, C]``. Returns values ``[B, S, H, W, output_dim-1]``
        and confidence ``[B, S, H, W]``."""
        if self.feature_only:
            raise NotImplementedError("this DPT head only extracts track features, which lite3r does not run")
        S = layers[self.layers[0]].shape[1]
        uv = self._uv_embeddings(image_size) if self.pos_embed else None
        if torch.compiler.is_exporting():
            # An exported graph must not loop over frames: the frame count is a dynamic axis there.
            return self._predict(layers, image_size, patch_start_idx, 0, S, uv)
        chunks = [
            self._predict(layers, image_size, patch_start_idx, start, min(start + frames_chunk_size, S), uv)
            for start in range(0, S, frames_chunk_size)
        ]
        values, confidence = zip(*chunks)
        return torch.cat(values, dim=1), torch.cat(confidence, dim=1)

    def _uv_embeddings(self, image_size: tuple[int, int]) -> list[torch.Tensor]:
        """The uv embeddings ``[C, h, w]`` added to each projected layer's map and to the fused map, computed
        once per forward outside ``_predict``: inside it (which the runtime compiles) Inductor inlines the
        float64 trigonometry into the add and recomputes it for every frame (profile of the H200 runtime,
        2026-11-30: 3.1 ms of 24 at 2 frames, 13 of 290 at 32)."""
        H, W = image_size
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        weight = self.scratch.output_conv1.weight
        shapes = [(project.out_channels, grid_h, grid_w) for project in self.projects]
        p, r = self.patch_size, self.down_ratio
        shapes.append((weight.shape[0], grid_h * p // r, grid_w * p // r))
        return [_uv_embedding(shape, W / H, self.uv_dtype, weight.dtype, weight.device) for shape in shapes]

    def _predict(
        self,
        layers: Mapping[int, torch.Tensor],
        image_size: tuple[int, int],
        patch_start_idx: int,
        start: int,
        end: int,
        uv: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = image_size
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        maps = []
        for i, (layer, project, resize) in enumerate(zip(self.layers, self.projects, self.resize_layers)):
            x = layers[layer][:, start:end, patch_start_idx:]
            B, S = x.shape[:2]
            x = self.norm(x.reshape(B * S, grid_h * grid_w, -1).to(self.norm.weight.dtype))  # per chunk: no copy
            x = project(x.permute(0, 2, 1).reshape(B * S, -1, grid_h, grid_w))
            if uv is not None:
                x = x + uv[i].to(x.dtype)
            maps.append(resize(x))
        x = self._fuse(maps)
        x = _interpolate(x, (grid_h * self.patch_size // self.down_ratio, grid_w * self.patch_size // self.down_ratio))
        if uv is not None:
            x = x + uv[-1].to(x.dtype)
        x = self.scratch.output_conv2(x).permute(0, 2, 3, 1)  # [B*S, H, W, output_dim]
        values = self.activation(x[..., :-1])
        confidence = 1 + x[..., -1].exp()
        return values.reshape(B, S, *values.shape[1:]), confidence.reshape(B, S, *confidence.shape[1:])

    def _fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """RefineNet fusion from the coarsest map (layer 4) up to the finest (layer 1, 4x the patch grid)."""
        s = self.scratch
        l1, l2, l3, l4 = (conv(x) for conv, x in zip((s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn), maps))
        x = s.refinenet4(l4, size=l3.shape[2:])
        x = s.refinenet3(x, l3, size=l2.shape[2:])
        x = s.refinenet2(x, l2, size=l1.shape[2:])
        x = s.refinenet1(x, l1, size=(2 * l1.shape[2], 2 * l1.shape[3]))
        return s.output_conv1(x)


class ResidualConvUnit(nn.Module):
    """``skip + conv2(relu(conv1(relu(x))))`` with ``skip = relu(x)`` (``relu_skip``, VGGT) or ``x`` (DA3).

    VGGT's official unit applies an in-place ReLU to its input before the residual add, so its skip is
    ``relu(x)``; DA3's ReLU is not in place. Each release was trained with its own behaviour.
    """

    def __init__(self, features: int, relu_skip: bool = True) -> None:
        super().__init__()
        self.relu_skip = relu_skip
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(x)
        return (activated if self.relu_skip else x) + self.conv2(F.relu(self.conv1(activated)))


class FeatureFusionBlock(nn.Module):
    """Adds the refined skip map (if any), refines, upsamples (bilinear, corners aligned), projects (1x1)."""

    def __init__(self, features: int, has_residual: bool = True, relu_skip: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features, relu_skip)
        self.resConfUnit2 = ResidualConvUnit(features, relu_skip)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, *, size: Sequence[int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(_interpolate(self.resConfUnit2(x), tuple(size)))


_MAX_INTERPOLATE_ELEMENTS = 1_610_612_736  # the official bound; larger outputs overflow int32 indexing in kernels


def _interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with aligned corners, split along the batch when the output would be too large (not in
    an exported graph, where the batch holds the dynamic frame axis and the split would bound it)."""
    n_chunks = size[0] * size[1] * x.shape[0] * x.shape[1] // _MAX_INTERPOLATE_ELEMENTS + 1
    if torch.compiler.is_exporting() or n_chunks == 1:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.chunk(n_chunks, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in chunks])


def _uv_embedding(
    shape: tuple[int, int, int],
    aspect_ratio: float,
    frequency_dtype: torch.dtype,
    dtype: torch.dtype,
    device: torch.device,
    ratio: float = 0.1,
) -> torch.Tensor:
    """``ratio`` x a sin/cos embedding ``[C, h, w]`` of normalised image-plane coordinates, for a map of
    ``shape`` in ``dtype`` (the coordinates are sampled in it, as the official code samples them in the map's).

    Coordinates span ``[-a, a] x [-b, b]`` with ``(a, b)`` the image's aspect vector normalised to unit
    diagonal, sampled at pixel centres; half of the channels encode u, half v (100 ** -k frequencies).
    """
    C, h, w = shape
    diagonal = math.sqrt(aspect_ratio**2 + 1.0)
    span_u, span_v = aspect_ratio / diagonal, 1.0 / diagonal
    u = torch.linspace(-span_u * (w - 1) / w, span_u * (w - 1) / w, steps=w, dtype=dtype, device=device)
    v = torch.linspace(-span_v * (h - 1) / h, span_v * (h - 1) / h, steps=h, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(u, v, indexing="xy")  # [h, w] each
    halves = (_sincos(coords.reshape(-1), C // 2, frequency_dtype) for coords in (uu, vv))
    embedding = torch.cat(tuple(halves), dim=-1)
    return (embedding.view(h, w, C) * ratio).permute(2, 0, 1)  # float32; added in the map's dtype


def _sincos(positions: torch.Tensor, dim: int, dtype: torch.dtype, omega_0: float = 100.0) -> torch.Tensor:
    """``[M] -> [M, dim]``: sines then cosines at ``dim/2`` frequencies ``omega_0 ** -(k / (dim/2))``,
    computed in ``dtype`` (the official VGGT code uses float64, DA3's float32)."""
    omega = torch.arange(dim // 2, dtype=dtype, device=positions.device) / (dim / 2.0)
    angles = positions.to(dtype)[:, None] * (1.0 / omega_0**omega)
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()
