"""Depth, camera-pose and point-cloud metrics of a reconstruction against ground truth.

A feed-forward reconstruction is defined up to a global scale and expressed in the frame of view 0, so
every metric here first brings the prediction to the ground truth's scale and frame; how, is written in
each function and in ``docs/data.md``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from lite3r.geometry import (
    camera_centers,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    relative_to_first,
    rotation_angle_deg,
    transform_points,
)

if TYPE_CHECKING:
    from lite3r.data.synthetic import Scene
    from lite3r.models import ModelFamily

DEPTH_ALIGNMENTS = ("median", "lstsq")


def depth_scale(pred: torch.Tensor, gt: torch.Tensor, alignment: str = "median") -> torch.Tensor:
    """The scale ``s`` that brings ``pred`` to ``gt`` (1-D tensors of valid depths).

    ``median``: ``median(gt) / median(pred)`` (the usual monocular-depth protocol; robust to outliers).
    ``lstsq``: ``argmin_s Σ (s·pred - gt)²``.
    """
    if alignment == "median":
        return gt.median() / pred.median()
    if alignment == "lstsq":
        return (pred * gt).sum() / (pred * pred).sum()
    raise ValueError(f"depth alignment must be one of {DEPTH_ALIGNMENTS}, got {alignment!r}")


def depth_metrics(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alignment: str = "median"
) -> dict[str, float]:
    """AbsRel and δ<1.25 of ``pred`` vs ``gt`` depth ``[S, H, W]``, each view scaled to its ground truth.

    The prediction of each view is scaled on its own valid pixels (``valid & gt > 0``); both metrics then
    average over all valid pixels of all views.
    """
    if pred.shape != gt.shape or valid.shape != gt.shape:
        shapes = f"pred {list(pred.shape)}, gt {list(gt.shape)}, valid {list(valid.shape)}"
        raise ValueError(f"depth shapes differ: {shapes}")
    abs_rel, within = [], []
    for p, g, m in zip(pred.float(), gt.float(), valid & (gt > 0)):
        if not m.any():
            continue
        p, g = p[m], g[m]
        p = p * depth_scale(p, g, alignment)
        abs_rel.append((p - g).abs() / g)
        within.append(torch.maximum(p / g, g / p) < 1.25)
    if not abs_rel:
        raise ValueError("no valid ground-truth depth in any view")
    return {
        "depth_abs_rel": torch.cat(abs_rel).mean().item(),
        "depth_delta_1_25": torch.cat(within).float().mean().item(),
    }


def relative_pose_errors(pred_extrinsics: torch.Tensor, gt_extrinsics: torch.Tensor) -> dict[str, float]:
    """Errors of the poses of views 1..S-1 relative to view 0 (``[S, 3, 4]`` camera-from-world each).

    - ``rotation_error_deg``: mean angle of ``R̂_rel R_relᵀ`` with ``R_rel = R_i R_0ᵀ``.
    - ``translation_error_deg``: mean angle between predicted and true directions of the relative
      translation ``t_rel = t_i - R_rel t_0`` (scale-free, as the reconstruction's scale is arbitrary).
    - ``camera_center_error``: the camera centres in view 0's frame, the prediction scaled by least squares
      onto the ground truth; mean centre distance divided by the mean true distance from camera 0.

    NaN for a single view.
    """
    if pred_extrinsics.shape != gt_extrinsics.shape:
        raise ValueError(f"extrinsics shapes differ: {list(pred_extrinsics.shape)} vs {list(gt_extrinsics.shape)}")
    if gt_extrinsics.shape[0] < 2:
        return dict.fromkeys(("rotation_error_deg", "translation_error_deg", "camera_center_error"), math.nan)
    pred_rel = relative_to_first(pred_extrinsics.double())[1:]
    gt_rel = relative_to_first(gt_extrinsics.double())[1:]
    rotation = rotation_angle_deg(pred_rel[..., :3] @ gt_rel[..., :3].transpose(-1, -2))
    cosine = torch.nn.functional.cosine_similarity(pred_rel[..., 3], gt_rel[..., 3], dim=-1)
    translation = torch.rad2deg(torch.acos(cosine.clamp(-1, 1)))
    pred_centers, gt_centers = camera_centers(pred_rel), camera_centers(gt_rel)
    scale = (pred_centers * gt_centers).sum() / (pred_centers * pred_centers).sum().clamp_min(1e-12)
    center = (scale * pred_centers - gt_centers).norm(dim=-1).mean() / gt_centers.norm(dim=-1).mean()
    return {
        "rotation_error_deg": rotation.mean().item(),
        "translation_error_deg": translation.mean().item(),
        "camera_center_error": center.item(),
    }


def prediction_gap(
    pred: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], image_size: tuple[int, int], family: ModelFamily
) -> dict[str, float]:
    """Errors of one scene's prediction with a reference prediction (e.g. the teacher's) taken as ground truth.

    Both are official output dicts of a ``family`` model with a batch of one scene. ``depth_abs_rel`` /
    ``depth_delta_1_25`` (per-view median-scaled, :func:`depth_metrics`), the relative-pose errors of
    :func:`relative_pose_errors` on the cameras, and ``pose_enc_l1`` (of the cameras' 9-value pose encodings).
    """
    size = tuple(image_size)
    pred, reference = ({k: v.float().cpu() for k, v in out.items()} for out in (pred, reference))
    depth_ref, depth_pred = (family.depth(out)[0] for out in (reference, pred))
    metrics = depth_metrics(depth_pred, depth_ref, torch.ones_like(depth_ref, dtype=torch.bool))
    metrics |= relative_pose_errors(*(family.cameras(out, size)[0][0] for out in (pred, reference)))
    pose_pred, pose_ref = (family.pose_encoding(out, size) for out in (pred, reference))
    metrics["pose_enc_l1"] = (pose_pred - pose_ref).abs().mean().item()
    return metrics


def nearest_neighbor_distances(query: torch.Tensor, reference: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """For each of ``query [N, 3]``, the distance to its nearest point in ``reference [M, 3]``.

    Exact brute force in ``chunk_size x chunk_size`` tiles, so memory stays bounded for any N and M.
    """
    if len(query) == 0 or len(reference) == 0:
        raise ValueError(f"point clouds must not be empty (got {len(query)} and {len(reference)} points)")
    best = torch.empty(len(query), dtype=query.dtype)
    for i in range(0, len(query), chunk_size):
        q = query[i : i + chunk_size]
        best[i : i + chunk_size] = torch.stack(
            [
                torch.cdist(q, reference[j : j + chunk_size], compute_mode="donot_use_mm_for_euclid_dist").amin(-1)
                for j in range(0, len(reference), chunk_size)
            ]
        ).amin(0)
    return best


def point_cloud_metrics(
    pred: torch.Tensor, gt: torch.Tensor, threshold: float, chunk_size: int = 2048
) -> dict[str, float]:
    """Chamfer distance and F-score of point clouds ``pred [N, 3]`` and ``gt [M, 3]``.

    ``chamfer = (mean_pred d(p, gt) + mean_gt d(g, pred)) / 2``; precision is the fraction of ``pred``
    within ``threshold`` of ``gt``, recall the converse, F-score their harmonic mean (0 when both are 0).
    """
    to_gt = nearest_neighbor_distances(pred, gt, chunk_size)
    to_pred = nearest_neighbor_distances(gt, pred, chunk_size)
    precision = (to_gt < threshold).float().mean().item()
    recall = (to_pred < threshold).float().mean().item()
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"chamfer": (to_gt.mean().item() + to_pred.mean().item()) / 2, "fscore": fscore}


def chamfer_distance(pred: torch.Tensor, gt: torch.Tensor, chunk_size: int = 2048) -> float:
    """Symmetric mean nearest-neighbour distance of ``pred [N, 3]`` and ``gt [M, 3]`` (see point_cloud_metrics)."""
    return point_cloud_metrics(pred, gt, threshold=0.0, chunk_size=chunk_size)["chamfer"]


def fscore(pred: torch.Tensor, gt: torch.Tensor, threshold: float, chunk_size: int = 2048) -> float:
    """F-score of ``pred [N, 3]`` against ``gt [M, 3]`` at distance ``threshold`` (see point_cloud_metrics)."""
    return point_cloud_metrics(pred, gt, threshold=threshold, chunk_size=chunk_size)["fscore"]


def reconstruction_metrics(
    predictions: dict[str, torch.Tensor],
    scene: Scene,
    family: ModelFamily,
    *,
    depth_alignment: str = "median",
    fscore_threshold: float = 0.05,
    max_points: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Score the official output dict of a ``family`` model against a synthetic scene; a flat dict of floats.

    ``predictions`` holds one scene's outputs (``[S, ...]``, optionally with a leading batch dimension of 1).

    - Depth: :func:`depth_metrics` (per-view ``depth_alignment``).
    - Cameras: :func:`relative_pose_errors` on the predicted cameras, and the mean absolute error of the
      predicted fields of view (``fov_error_deg``).
    - Points: the depth unprojected with the predicted cameras, moved to view 0's frame (``depth_points_*``),
      and, for a family that predicts a point map (VGGT's ``world_points``, in view 0's frame by its
      convention), that map (``pointmap_*``). See :func:`_aligned_point_cloud_metrics`; the same ``max_points``
      random valid pixels (seeded) are used for prediction and ground truth.
    """
    num_views, height, width = scene.depth.shape
    shapes = family.shapes(num_views, height, width)
    outputs = {k: _unbatched(predictions, k, shape) for k, shape in shapes.items() if k in predictions}
    try:
        depth = family.depth(outputs)
        pred_extrinsics, pred_intrinsics = family.cameras(outputs, (height, width))
        pose_enc = family.pose_encoding(outputs, (height, width))
        points = None if family.points is None else outputs[family.points]
    except KeyError as e:
        raise ValueError(f"predictions lack {e.args[0]!r} (have {sorted(predictions)})") from None

    metrics = depth_metrics(depth, scene.depth, scene.valid, depth_alignment)
    metrics |= relative_pose_errors(pred_extrinsics, scene.extrinsics)
    gt_fov = extri_intri_to_pose_encoding(scene.extrinsics, scene.intrinsics, (height, width))[..., 7:]
    metrics["fov_error_deg"] = torch.rad2deg(pose_enc[..., 7:] - gt_fov).abs().mean().item()

    pixels = scene.valid.reshape(-1).nonzero().squeeze(-1)
    pixels = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:max_points]]
    gt_points = transform_points(scene.world_points, scene.extrinsics[:1].expand(num_views, 3, 4))
    depth_points = transform_points(
        depth_to_world_points(depth, pred_extrinsics, pred_intrinsics), pred_extrinsics[:1].expand(num_views, 3, 4)
    )
    unit = scene.depth[scene.valid].median()
    clouds = {"depth_points": depth_points} if points is None else {"pointmap": points, "depth_points": depth_points}
    for name, cloud in clouds.items():
        scores = _aligned_point_cloud_metrics(
            cloud.reshape(-1, 3)[pixels], gt_points.reshape(-1, 3)[pixels], unit, fscore_threshold
        )
        metrics |= {f"{name}_{k}": v for k, v in scores.items()}
    return metrics


def _aligned_point_cloud_metrics(
    pred: torch.Tensor, gt: torch.Tensor, unit: torch.Tensor, threshold: float
) -> dict[str, float]:
    """Point-cloud metrics of clouds that share their origin (camera 0) but not their scale.

    The prediction is scaled by the ratio of median distances from the origin, and both are divided by
    ``unit`` (the median true depth), so distances and ``threshold`` are relative to the scene's size.
    """
    pred = pred * (gt.norm(dim=-1).median() / pred.norm(dim=-1).median().clamp_min(1e-12))
    return point_cloud_metrics(pred / unit, gt / unit, threshold)


def _unbatched(predictions: dict[str, torch.Tensor], key: str, expected: tuple[int, ...]) -> torch.Tensor:
    """``predictions[key]`` of shape ``expected`` (one scene), without a batch dim of 1, float32 on the CPU."""
    value = torch.as_tensor(predictions[key]).detach().float().cpu()
    if tuple(value.shape) not in (expected, (1, *expected)):
        raise ValueError(
            f"predictions[{key!r}] has shape {list(value.shape)}, expected {list(expected)} for this scene, "
            "with or without a batch dim of 1"
        )
    return value.reshape(expected)
