"""Depth-Anything-3 (Lin et al., 2025), the ``da3-large`` configuration of ByteDance-Seed/Depth-Anything-3.

One DINOv2 ViT-L/14 whose blocks from ``alt_start`` on alternate per-view (even index) and cross-view (odd index)
attention; a camera token replaces the class token at ``alt_start``; q/k-norm and 2D RoPE from ``qknorm_start`` /
``rope_start``. Four layers (``out_layers``) feed the DualDPT depth head, the camera tokens of the last one feed
the camera decoder. The state dict has the official ``DepthAnything3Net`` layout (``backbone.pretrained``,
``head``, ``cam_dec``, ``cam_enc``), so the released checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from lite3r.geometry import extri_intri_to_pose_encoding, invert_extrinsics, pose_encoding_to_extri_intri
from lite3r.models._base import ImageNormalization, ModelConfig, check_images
from lite3r.models._family import ModelFamily
from lite3r.models.da3_heads import CameraDecoder, CameraEncoder, DualDPTHead
from lite3r.models.dinov2 import resize_position_table
from lite3r.models.layers import Block, PatchEmbed, RotaryPositionEmbedding2D, patch_positions, run_block

REFERENCE_VIEW_STRATEGIES = ("saddle_balanced", "saddle_sim_range", "first", "middle")
MIN_VIEWS_FOR_REFERENCE_SELECTION = 3  # the official THRESH_FOR_REF_SELECTION
_INTERPOLATE_OFFSET = 0.1  # DINOv2's position-table resize in DA3 (scale factors, no antialiasing)


@dataclasses.dataclass(frozen=True)
class DA3Config(ModelConfig):
    """Sizes of a DA3 model. The defaults are DA3-Large, as built from the official ``da3-large.yaml``."""

    display_name = "DA3"

    img_size: int = 518  # sets the position table (37 x 37 patches); any multiple of 14 runs
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 1.0  # LayerScale init of the backbone blocks
    rope_freq: float = 100.0
    alt_start: int = 8  # first block with alternating attention and the camera token
    qknorm_start: int = 8
    rope_start: int = 8
    out_layers: tuple[int, int, int, int] = (11, 15, 19, 23)
    head_features: int = 256
    head_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    aux_levels: int = 4  # ray-branch pyramid levels (parameters only)
    cam_enc_depth: int = 4
    cam_enc_num_heads: int = 16
    ref_view_strategy: str = "saddle_balanced"  # the official default
    view_size: int = 504  # default view size: the official input processor's (longest side 504)

    def __post_init__(self) -> None:
        problems = []
        if not 2 <= self.alt_start < self.depth:
            problems.append(f"alt_start {self.alt_start} must be in [2, depth={self.depth})")
        for name in ("qknorm_start", "rope_start"):
            if not 0 <= getattr(self, name) < self.depth:
                problems.append(f"{name} {getattr(self, name)} must be in [0, depth={self.depth})")
        if self.ref_view_strategy not in REFERENCE_VIEW_STRATEGIES:
            problems.append(
                f"ref_view_strategy {self.ref_view_strategy!r} must be one of {', '.join(REFERENCE_VIEW_STRATEGIES)}"
            )
        self._check("out_layers", "head_out_channels", problems)


class DA3Backbone(nn.Module):
    """The DINOv2 ViT of DA3 with alternating attention (``backbone.pretrained`` in the official model).

    Blocks before ``alt_start`` and even-indexed blocks from it on attend within each view (``[B*S, N, C]``);
    odd-indexed blocks from ``alt_start`` on attend across all views of a scene (``[B, S*N, C]``). In the
    cross-view blocks every patch token sits at RoPE position (1, 1) and the camera token at (0, 0): positions
    only separate the camera token from the patches there. With at least three views, the view chosen by
    ``ref_view_strategy`` (from the class tokens before block ``alt_start - 1``) is moved to the front, so that
    it receives the reference camera token; outputs are returned in the input order.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 1.0,
        rope_freq: float = 100.0,
        alt_start: int = 8,
        qknorm_start: int = 8,
        rope_start: int = 8,
        out_layers: tuple[int, ...] = (11, 15, 19, 23),
        ref_view_strategy: str = "saddle_balanced",
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.alt_start = alt_start
        self.rope_start = rope_start
        self.out_layers = tuple(out_layers)
        self.ref_view_strategy = ref_view_strategy
        self.grad_checkpointing = False
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Index 0: the reference view, index 1: every other view.
        self.camera_token = nn.Parameter(torch.randn(1, 2, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.rope = RotaryPositionEmbedding2D(rope_freq)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                init_values=init_values,
                qk_norm=i >= qknorm_start,
                rope=self.rope if i >= rope_start else None,
                norm_eps=1e-6,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)  # eps 1e-5 here, unlike the blocks' 1e-6 (as in the official code)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def is_cross_view(self, index: int) -> bool:
        """Whether block ``index`` attends across the views of a scene."""
        return index >= self.alt_start and index % 2 == 1

    def forward(self, images: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """``images``: normalised ``[B, S, 3, H, W]``. Returns ``{layer: [B, S, P, 2C]}`` for ``out_layers``
        (per-view tokens, then normalised cross-view tokens; patches only) and the camera tokens ``[B, S, 2C]``
        of the last output layer."""
        B, S, _, H, W = images.shape
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        x = self.patch_embed(images.reshape(B * S, 3, H, W))
        x = torch.cat((self.cls_token.expand(B * S, -1, -1), x), dim=1)
        x = x + resize_position_table(self.pos_embed, grid_h, grid_w, _INTERPOLATE_OFFSET)
        N, C = x.shape[1:]
        x = x.reshape(B, S, N, C)
        # One rotary table per forward (RotaryPositionEmbedding2D): every view has the same positions (one row,
        # broadcast); in the cross-view blocks each view's positions repeat S times.
        view_pos = patch_positions(1, grid_h, grid_w, 1, images.device)
        scene_pos = torch.cat((view_pos[:, :1], torch.ones_like(view_pos[:, 1:])), dim=1)
        head_dim = self.blocks[0].attn.head_dim
        view_rope = self.rope.table(view_pos, head_dim)
        _, scene_rope = self.rope.view_and_scene_tables(scene_pos, S, head_dim)

        batch = torch.arange(B, device=images.device)[:, None]
        order = None  # views reordered reference-first, when a reference is selected
        outputs = {}
        # In an exported graph the view count is a dynamic axis, so the selection runs for any count and keeps
        # view 0 (the identity order) below the threshold, where the official code does not select.
        exporting = torch.compiler.is_exporting()
        select = self.ref_view_strategy != "first" and (exporting or S >= MIN_VIEWS_FOR_REFERENCE_SELECTION)
        for i, block in enumerate(self.blocks):
            if i == self.alt_start - 1 and select:
                reference = select_reference_view(x[:, :, 0], self.ref_view_strategy)
                if exporting:
                    enough = torch.full_like(reference, S) >= MIN_VIEWS_FOR_REFERENCE_SELECTION
                    reference = torch.where(enough, reference, torch.zeros_like(reference))
                order = reference_first_order(reference, S)
                x, local = x[batch, order], local[batch, order]
            if i == self.alt_start:
                reference, others = self.camera_token[:, :1], self.camera_token[:, 1:]
                camera = torch.cat((reference.expand(B, 1, C), others.expand(B, S - 1, C)), dim=1)
                x = torch.cat((camera[:, :, None], x[:, :, 1:]), dim=2)
            if self.is_cross_view(i):
                rope = None if i < self.rope_start else scene_rope
                x = run_block(self, block, x.reshape(B, S * N, C), rope, frames=S).reshape(B, S, N, C)
            else:
                rope = None if i < self.rope_start else view_rope
                x = run_block(self, block, x.reshape(B * S, N, C), rope).reshape(B, S, N, C)
                local = x
            if i in self.out_layers:
                out = torch.cat((local, x), dim=-1)
                outputs[i] = out if order is None else out[batch, order.argsort(dim=1)]
        camera_tokens = outputs[self.out_layers[-1]][:, :, 0]
        layers = {i: torch.cat((o[..., 1:, :C], self.norm(o[..., 1:, C:])), dim=-1) for i, o in outputs.items()}
        return layers, camera_tokens


def select_reference_view(cls_tokens: torch.Tensor, strategy: str) -> torch.Tensor:
    """Index ``[B]`` of the reference view from the class tokens ``[B, S, C]``, by the official strategies.

    ``saddle_balanced`` takes the view closest to the middle of the scene's range in three statistics (mean cosine
    similarity to the other views, token norm, variance of the normalised token); ``saddle_sim_range`` the view
    whose similarities to the others spread most; ``first`` / ``middle`` by position.
    """
    B, S, _ = cls_tokens.shape
    if strategy == "first":
        return torch.zeros(B, dtype=torch.long, device=cls_tokens.device)
    if strategy == "middle":
        return torch.full((B,), S // 2, dtype=torch.long, device=cls_tokens.device)
    unit = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True)
    similarity = torch.matmul(unit, unit.transpose(1, 2)) - torch.eye(S, device=cls_tokens.device)[None]
    if strategy == "saddle_sim_range":
        return (similarity.max(dim=-1).values - similarity.min(dim=-1).values).argmax(dim=1)
    if strategy != "saddle_balanced":
        raise ValueError(f"unknown reference-view strategy {strategy!r}; choose from {REFERENCE_VIEW_STRATEGIES}")
    statistics = (similarity.sum(dim=-1) / (S - 1), cls_tokens.norm(dim=-1), unit.var(dim=-1))
    balance = sum((_min_max_scaled(s) - 0.5).abs() for s in statistics)
    return balance.argmin(dim=1)


def _min_max_scaled(values: torch.Tensor) -> torch.Tensor:
    low, high = values.min(dim=1, keepdim=True).values, values.max(dim=1, keepdim=True).values
    return (values - low) / (high - low + 1e-8)


def reference_first_order(reference: torch.Tensor, num_views: int) -> torch.Tensor:
    """``[B, S]`` view order with view ``reference[b]`` first and the others in their original order."""
    positions = torch.arange(num_views, device=reference.device).expand(reference.shape[0], -1)
    shifted = torch.where((positions > 0) & (positions <= reference[:, None]), positions - 1, positions)
    return torch.cat((reference[:, None], shifted[:, 1:]), dim=1)


OUTPUT_SHAPES = {
    "depth": ("S", "H", "W"),
    "depth_conf": ("S", "H", "W"),
    "extrinsics": ("S", 3, 4),
    "intrinsics": ("S", 3, 3),
}
_RAY_BRANCH = (
    *(f"head.scratch.refinenet{i}_aux" for i in range(1, 5)),
    "head.scratch.output_conv1_aux",
    "head.scratch.output_conv2_aux",
)


@functools.cache
def da3_family(config: DA3Config) -> ModelFamily:
    """DA3's contract with the pipeline (see :class:`~lite3r.models.ModelFamily`)."""
    blocks = r"(?:^|\.)backbone\.pretrained\.blocks\.(?:{})\.attn$"
    alternating = range(config.alt_start, config.depth)
    cross_view = [i for i in alternating if i % 2 == 1]  # DA3Backbone.is_cross_view
    return ModelFamily(
        name="da3",
        output_shapes=OUTPUT_SHAPES,
        image_size=config.view_size,
        # Cross-view blocks are the long-sequence layers; "all" adds the per-view blocks of the alternating part
        # (as VGGT's "all" adds its frame blocks), not the DINOv2 blocks before it.
        sla_layers={
            "global": blocks.format("|".join(map(str, cross_view))),
            "all": blocks.format("|".join(map(str, alternating))),
        },
        fp8_layers=("backbone.pretrained.blocks.*",),
        heads=("head", "cam_dec"),
        parameters_only=("cam_enc", *_RAY_BRANCH),
        cameras=lambda outputs, size: (outputs["extrinsics"], outputs["intrinsics"]),
        pose_encoding=lambda outputs, size: extri_intri_to_pose_encoding(
            outputs["extrinsics"], outputs["intrinsics"], size
        ),
        depth_channel=False,
        frame_tokens=lambda h, w: (h // config.patch_size) * (w // config.patch_size) + 1,  # + the cls/camera token
    )


class DepthAnything3(nn.Module):
    """``model(images)`` with ``images`` ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` in ``[0, 1]`` (H, W multiples
    of 14) returns the official DA3 outputs: ``depth [B, S, H, W]``, ``depth_conf [B, S, H, W]``,
    ``extrinsics [B, S, 3, 4]`` (OpenCV camera-from-world, the reference view's close to the identity) and
    ``intrinsics [B, S, 3, 3]`` (pixels, principal point at the image centre).
    """

    def __init__(self, config: DA3Config | None = None) -> None:
        super().__init__()
        c = config or DA3Config()
        self.config = c
        self.normalize = ImageNormalization()
        self.backbone = nn.Module()  # the official DinoV2 wrapper holds the ViT as `pretrained`
        self.backbone.pretrained = DA3Backbone(
            img_size=c.img_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            init_values=c.init_values,
            rope_freq=c.rope_freq,
            alt_start=c.alt_start,
            qknorm_start=c.qknorm_start,
            rope_start=c.rope_start,
            out_layers=c.out_layers,
            ref_view_strategy=c.ref_view_strategy,
        )
        dim_in = 2 * c.embed_dim  # per-view and cross-view tokens concatenated
        self.head = DualDPTHead(
            dim_in, c.patch_size, c.head_features, c.head_out_channels, c.out_layers, aux_levels=c.aux_levels
        )
        self.cam_dec = CameraDecoder(dim_in)
        self.cam_enc = CameraEncoder(c.embed_dim, c.cam_enc_depth, c.cam_enc_num_heads, c.mlp_ratio)

    @property
    def family(self) -> ModelFamily:
        return da3_family(self.config)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone blocks in the backward pass (only while training with gradients enabled)."""
        self.backbone.pretrained.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = check_images(images, self.config.patch_size, "DA3")
        H, W = images.shape[-2:]
        backbone = self.backbone.pretrained
        # Normalised in float32, then in the backbone's dtype (bf16 weights take bf16 input; float32 weights under
        # autocast take float32 and the convolution autocasts, as in the official model).
        layers, camera_tokens = backbone(self.normalize(images).to(backbone.patch_embed.proj.weight.dtype))
        # As in the official model, the heads run in full precision even under autocast.
        with torch.autocast(images.device.type, enabled=False):
            depth, depth_conf = self.head(layers, (H, W), 0)
            camera_to_world, intrinsics = pose_encoding_to_extri_intri(self.cam_dec(camera_tokens), (H, W))
        return {
            "depth": depth.squeeze(-1),
            "depth_conf": depth_conf,
            "extrinsics": invert_extrinsics(camera_to_world),
            "intrinsics": intrinsics,
        }
