"""The VGGT training objective (Wang et al., CVPR 2025, Sec. 3.3 and the official training code).

- Ground truth is expressed in the first camera's frame and scaled so that the mean distance of the valid
  3D points to that camera is 1 (:func:`normalize_scene`); the model predicts in the same frame and scale.
- Camera: L1 on the pose encoding (translation, quaternion, field of view; weights 1, 1, 0.5), on the
  estimate of every refinement iteration, iteration ``i`` of ``n`` weighted ``gamma ** (n - 1 - i)``
  (gamma 0.6), averaged over iterations.
- Depth and points (the same regression loss): per valid pixel, the aleatoric-uncertainty term
  ``c * |pred - gt| - alpha * log c`` with the predicted confidence ``c`` (alpha 0.2), the confidence-weighted
  gradient term ``c * |grad(pred - gt)|`` over 4 scales (every 1, 2, 4, 8 pixels), as the paper writes both,
  and the plain ``|pred - gt|`` that the official code adds. As in the official code the per-pixel terms
  above the 98th percentile (of a strided sample) are dropped (outliers: silhouettes, far walls) and ``|.|``
  is the Euclidean norm over the channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lite3r.geometry import depth_to_world_points, extri_intri_to_pose_encoding, relative_to_first


@dataclass(frozen=True)
class LossConfig:
    """Weights of the VGGT objective (defaults: the official training configuration)."""

    camera: float = 5.0
    depth: float = 1.0
    points: float = 1.0
    camera_gamma: float = 0.6  # iteration i of n weighs gamma ** (n - 1 - i)
    translation: float = 1.0
    rotation: float = 1.0
    fov: float = 0.5
    conf_alpha: float = 0.2  # weight of -log(confidence)
    gradient_scales: int = 4
    quantile: float = 0.98  # per-pixel terms above this quantile are dropped (1.0 keeps all)


@dataclass(frozen=True)
class SceneTargets:
    """Normalised ground truth of a batch ``[B, S, ...]`` (see :func:`normalize_scene`)."""

    pose_enc: torch.Tensor  # [B, S, 9]
    depth: torch.Tensor  # [B, S, H, W]
    world_points: torch.Tensor  # [B, S, H, W, 3], in the first camera's frame
    valid: torch.Tensor  # [B, S, H, W] bool
    scale: torch.Tensor  # [B]: world units per normalised unit


def normalize_scene(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor
) -> SceneTargets:
    """Ground truth of ``[B, S]`` views in camera 0's frame, scaled to a mean point distance of 1 per scene."""
    extrinsics = relative_to_first(extrinsics.float())
    depth = depth.float() * valid
    points = depth_to_world_points(depth, extrinsics, intrinsics.float()) * valid[..., None]
    counts = valid.sum(dim=(1, 2, 3)).clamp_min(1)
    scale = (points.norm(dim=-1).sum(dim=(1, 2, 3)) / counts).clamp_min(1e-6)
    extrinsics = torch.cat((extrinsics[..., :3], extrinsics[..., 3:] / scale[:, None, None, None]), dim=-1)
    pose_enc = extri_intri_to_pose_encoding(extrinsics, intrinsics.float(), tuple(depth.shape[-2:]))
    return SceneTargets(pose_enc, depth / scale[:, None, None, None], points / scale[:, None, None, None, None],
                        valid, scale)  # fmt: skip


def camera_loss(poses: list[torch.Tensor], target: torch.Tensor, config: LossConfig) -> dict[str, torch.Tensor]:
    """L1 pose-encoding loss over the refinement iterations ``poses`` (each ``[B, S, 9]``)."""
    n = len(poses)
    terms = {"camera_t": 0.0, "camera_r": 0.0, "camera_fov": 0.0}
    for i, pose in enumerate(poses):
        weight = config.camera_gamma ** (n - 1 - i) / n
        error = (pose.float() - target).abs()
        terms["camera_t"] = terms["camera_t"] + weight * error[..., :3].clamp_max(100).mean()
        terms["camera_r"] = terms["camera_r"] + weight * error[..., 3:7].mean()
        terms["camera_fov"] = terms["camera_fov"] + weight * error[..., 7:].mean()
    return terms


def regression_loss(
    pred: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor, config: LossConfig
) -> dict[str, torch.Tensor]:
    """Confidence-weighted regression of ``pred``/``target`` ``[B, S, H, W, C]`` on ``valid`` pixels."""
    error = pred.float() - target.float()
    confidence = confidence.float()
    distance = error.norm(dim=-1)[valid]
    conf = confidence[valid]
    return {
        "conf": _drop_outliers(conf * distance - config.conf_alpha * conf.log(), config.quantile).mean(),
        "reg": _drop_outliers(distance, config.quantile).mean(),
        "grad": gradient_loss(error, confidence, valid, config.gradient_scales),
    }


def gradient_loss(error: torch.Tensor, confidence: torch.Tensor, valid: torch.Tensor, scales: int) -> torch.Tensor:
    """Mean over ``scales`` subsamplings (every 1, 2, 4 ... pixels) of the confidence-weighted L1 norm of the
    horizontal and vertical differences of ``error [..., H, W, C]``, on pixel pairs that are both valid."""
    error = error.flatten(0, -4) * valid.flatten(0, -3)[..., None]
    confidence, valid = confidence.flatten(0, -3), valid.flatten(0, -3)
    total = error.new_zeros(())
    for scale in range(scales):
        step = 2**scale
        e, c, m = error[:, ::step, ::step], confidence[:, ::step, ::step], valid[:, ::step, ::step]
        pairs = m.sum().clamp_min(1)
        for dim in (1, 2):  # rows, columns
            n = e.shape[dim] - 1
            both = m.narrow(dim, 1, n) & m.narrow(dim, 0, n)
            diff = (e.narrow(dim, 1, n) - e.narrow(dim, 0, n)).abs().clamp_max(100).sum(-1)
            total = total + (c.narrow(dim, 1, n) * diff * both).sum() / pairs
    return total / scales


def vggt_loss(
    outputs: dict[str, torch.Tensor], poses: list[torch.Tensor], targets: SceneTargets, config: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted objective and its terms (detached, for logging)."""
    camera = camera_loss(poses, targets.pose_enc, config)
    depth = regression_loss(outputs["depth"], targets.depth[..., None], outputs["depth_conf"], targets.valid, config)
    points = regression_loss(
        outputs["world_points"], targets.world_points, outputs["world_points_conf"], targets.valid, config
    )
    camera_total = config.translation * camera["camera_t"] + config.rotation * camera["camera_r"]
    camera_total = camera_total + config.fov * camera["camera_fov"]
    total = config.camera * camera_total + config.depth * sum(depth.values()) + config.points * sum(points.values())
    terms = camera | {f"depth_{k}": v for k, v in depth.items()} | {f"points_{k}": v for k, v in points.items()}
    return total, {k: v.detach() for k, v in terms.items()}


QUANTILE_SAMPLE = 1 << 18  # the threshold is the quantile of at most this many evenly strided values


def _drop_outliers(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """``values`` without those above their ``quantile`` (kept whole when that would leave too few).

    The threshold comes from an evenly strided sample of at most :data:`QUANTILE_SAMPLE` values: a batch holds
    millions of pixels, and an exact selection over all of them runs in one GPU thread block.
    """
    if quantile >= 1.0 or values.numel() < 1000:
        return values
    flat = values.detach().flatten()
    sample = flat[:: max(1, flat.numel() // QUANTILE_SAMPLE)]
    threshold = torch.kthvalue(sample, max(1, int(quantile * sample.numel()))).values
    kept = values[values <= threshold]
    return kept if kept.numel() > 0 else values
