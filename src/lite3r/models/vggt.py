"""VGGT (Wang et al., CVPR 2025): images of one scene in, cameras, depth and world points out.

The state dict has the official facebookresearch/vggt layout (``aggregator``, ``camera_head``, ``point_head``,
``depth_head``, ``track_head``), so an official checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from lite3r.geometry import pose_encoding_to_extri_intri
from lite3r.models._base import ModelConfig, check_images
from lite3r.models._family import ModelFamily
from lite3r.models.aggregator import Aggregator
from lite3r.models.heads import CameraHead, DPTHead
from lite3r.models.track_head import TrackHead


@dataclasses.dataclass(frozen=True)
class VGGTConfig(ModelConfig):
    """Sizes of a VGGT model. The defaults are VGGT-1B, as built by the official ``VGGT()``."""

    display_name = "VGGT"

    img_size: int = 518  # sets the DINOv2 position table (37 x 37 patches); any multiple of 14 runs
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # frame blocks = global blocks = aggregator layers
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    init_values: float = 0.01  # LayerScale init of aggregator and camera-trunk blocks
    dinov2_depth: int = 24
    dinov2_num_heads: int = 16
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    track_features: int = 128
    track_hidden_size: int = 384
    track_depth: int = 6
    keep_all_layers: bool = False  # True: the aggregator keeps every layer output, as the official code does

    def __post_init__(self) -> None:
        self._check("dpt_layers", "dpt_out_channels", [])


OUTPUT_SHAPES = {
    "pose_enc": ("S", 9),
    "depth": ("S", "H", "W", 1),
    "depth_conf": ("S", "H", "W"),
    "world_points": ("S", "H", "W", 3),
    "world_points_conf": ("S", "H", "W"),
}


@functools.cache
def vggt_family(config: VGGTConfig) -> ModelFamily:
    """VGGT's contract with the pipeline (see :class:`~lite3r.models.ModelFamily`)."""
    return ModelFamily(
        name="vggt",
        output_shapes=OUTPUT_SHAPES,
        image_size=config.img_size,
        # The aggregator alternates frame attention (within one frame) and global attention (all frames); these
        # are the long-sequence layers. DINOv2 patch-embed blocks and the camera-head trunk are never converted.
        sla_layers={
            "global": r"(?:^|\.)global_blocks\.\d+\.attn$",
            "all": r"(?:^|\.)(?:global|frame)_blocks\.\d+\.attn$",
        },
        fp8_layers=("aggregator.patch_embed.blocks.*", "aggregator.frame_blocks.*", "aggregator.global_blocks.*"),
        heads=("camera_head", "depth_head", "point_head"),
        parameters_only=("track_head",),
        cameras=lambda outputs, size: pose_encoding_to_extri_intri(outputs["pose_enc"], size),
        pose_encoding=lambda outputs, size: outputs["pose_enc"],
        depth_channel=True,
        points="world_points",
        summary_tokens=1 + config.num_register_tokens,  # camera + registers open every frame (the aggregator's order)
        frame_tokens=lambda h, w: (h // config.patch_size) * (w // config.patch_size) + 1 + config.num_register_tokens,
        official_settings={"aggregator.keep_layers": None},  # the official aggregator keeps every layer output
    )


class VGGT(nn.Module):
    """``model(images)`` with ``images`` ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` in ``[0, 1]`` (H, W multiples
    of 14) returns ``pose_enc [B, S, 9]``, ``depth [B, S, H, W, 1]``, ``depth_conf [B, S, H, W]``,
    ``world_points [B, S, H, W, 3]``, ``world_points_conf [B, S, H, W]``. Frame 0 of each scene is the
    reference camera.
    """

    def __init__(self, config: VGGTConfig | None = None) -> None:
        super().__init__()
        c = config or VGGTConfig()
        self.config = c
        self.aggregator = Aggregator(
            img_size=c.img_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            num_register_tokens=c.num_register_tokens,
            rope_freq=c.rope_freq,
            init_values=c.init_values,
            dinov2_depth=c.dinov2_depth,
            dinov2_num_heads=c.dinov2_num_heads,
            keep_layers=None if c.keep_all_layers else {*c.dpt_layers, c.depth - 1},
        )
        dim_in = 2 * c.embed_dim  # frame and global outputs concatenated
        self.camera_head = CameraHead(
            dim_in, c.camera_trunk_depth, c.camera_num_heads, c.mlp_ratio, c.init_values, c.camera_iterations
        )
        dpt = dict(
            patch_size=c.patch_size, features=c.dpt_features, out_channels=c.dpt_out_channels, layers=c.dpt_layers
        )
        self.point_head = DPTHead(dim_in, output_dim=4, activation="inv_log", **dpt)
        self.depth_head = DPTHead(dim_in, output_dim=2, activation="exp", **dpt)
        self.track_head = TrackHead(
            dim_in,
            c.patch_size,
            c.track_features,
            c.track_hidden_size,
            c.track_depth,
            out_channels=c.dpt_out_channels,
            layers=c.dpt_layers,
        )

    @property
    def family(self) -> ModelFamily:
        return vggt_family(self.config)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute aggregator blocks in the backward pass (only while training with gradients enabled)."""
        self.aggregator.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_pose_iterations(images)[0]

    def forward_with_pose_iterations(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The outputs of ``forward`` and the camera head's estimate after every refinement iteration (the
        last is ``pose_enc``): the camera loss of teacher training weighs them all, as the official one does."""
        images = check_images(images, self.config.patch_size, "VGGT")
        H, W = images.shape[-2:]
        layers = self.aggregator(images)
        start = self.aggregator.patch_start_idx
        # As in the official model, the heads run in full precision even under autocast.
        with torch.autocast(images.device.type, enabled=False):
            poses = self.camera_head(layers[self.config.depth - 1])
            depth, depth_conf = self.depth_head(layers, (H, W), start)
            world_points, world_points_conf = self.point_head(layers, (H, W), start)
        outputs = {
            "pose_enc": poses[-1],
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": world_points,
            "world_points_conf": world_points_conf,
        }
        return outputs, poses
