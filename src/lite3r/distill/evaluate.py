"""How far a student is from its teacher on held-out scenes: the numbers distillation must bring down."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from lite3r.calibration.fp8 import autocast
from lite3r.data.datasets import item_images
from lite3r.geometry import pose_encoding_to_extri_intri
from lite3r.metrics import depth_metrics, relative_pose_errors


def gap_to_teacher(
    teacher: nn.Module, student: nn.Module, data: Iterable[Any], *, bf16: bool = True
) -> dict[str, float]:
    """Mean over scenes of the student's errors with the teacher's outputs taken as ground truth.

    ``depth_abs_rel`` (per-view median-scaled, as :func:`lite3r.metrics.depth_metrics`), the relative-pose
    errors of :func:`lite3r.metrics.relative_pose_errors` on the decoded cameras, and ``pose_enc_l1``.
    """
    device = next(student.parameters()).device
    totals: dict[str, float] = {}
    scenes = 0
    for item in data:
        images = item_images(item).to(device)
        with torch.no_grad(), autocast(device, bf16):
            reference, pred = teacher(images), student(images)
        height, width = images.shape[-2:]
        depth_t, depth_s = reference["depth"][0, ..., 0].float().cpu(), pred["depth"][0, ..., 0].float().cpu()
        metrics = depth_metrics(depth_s, depth_t, torch.ones_like(depth_t, dtype=torch.bool))
        extrinsics = [pose_encoding_to_extri_intri(out["pose_enc"][0].float().cpu(), (height, width))[0]
                      for out in (pred, reference)]  # fmt: skip
        metrics |= relative_pose_errors(*extrinsics)
        metrics["pose_enc_l1"] = (pred["pose_enc"] - reference["pose_enc"]).abs().mean().item()
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value
        scenes += 1
    if not scenes:
        raise ValueError("no scenes to evaluate on")
    return {key: value / scenes for key, value in totals.items()}
