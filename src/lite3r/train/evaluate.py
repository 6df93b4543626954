"""Scoring a model on held-out scenes: against the ground truth, and against a teacher's predictions.

Against the ground truth: depth AbsRel and δ<1.25 (per-view median scaling) and the relative-pose errors of
:mod:`lite3r.metrics`. Against a teacher: the same numbers with the teacher's prediction as the truth, as
the parity reconstruction gate computes them (:func:`lite3r.parity.metrics_against_teacher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lite3r.calibration.fp8 import autocast
from lite3r.data.synthetic import Scene
from lite3r.geometry import pose_encoding_to_extri_intri
from lite3r.metrics import depth_metrics, relative_pose_errors
from lite3r.models.vggt import VGGTConfig, vggt_family
from lite3r.parity.gates import OUTPUT_NAMES

Prediction = dict[str, np.ndarray]  # the official outputs of one scene, batch dim 1, float32 on the CPU
_VGGT = vggt_family(VGGTConfig())  # the output layout of the VGGT models teacher training trains


def predict(model: nn.Module, scenes: Sequence[Scene], *, bf16: bool = True) -> list[Prediction]:
    """``model``'s outputs on each scene (under bf16 autocast on CUDA when ``bf16``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for scene in scenes:
            with torch.no_grad(), autocast(device, bf16):
                out = model(scene.images.to(device))
            predictions.append({k: out[k].float().cpu().numpy() for k in OUTPUT_NAMES})
    finally:
        model.train(was_training)
    return predictions


def errors_vs_ground_truth(prediction: Prediction, scene: Scene) -> dict[str, float]:
    """Depth AbsRel / δ<1.25 and relative rotation / translation errors of one scene's prediction."""
    height, width = scene.depth.shape[-2:]
    depth = torch.from_numpy(prediction["depth"][0, ..., 0])
    extrinsics, _ = pose_encoding_to_extri_intri(torch.from_numpy(prediction["pose_enc"][0]), (height, width))
    metrics = depth_metrics(depth, scene.depth.cpu(), scene.valid.cpu())
    return metrics | relative_pose_errors(extrinsics, scene.extrinsics.cpu())


def evaluate(
    predictions: Sequence[Prediction], scenes: Sequence[Scene], teacher: Sequence[Prediction] | None = None
) -> dict[str, float]:
    """Mean over scenes of the errors against the ground truth, plus ``teacher_*`` against ``teacher``'s
    predictions of the same scenes when given."""
    from lite3r.parity.comparison import metrics_against_teacher

    per_scene: list[dict[str, float]] = []
    for i, (prediction, scene) in enumerate(zip(predictions, scenes, strict=True)):
        row = errors_vs_ground_truth(prediction, scene)
        if teacher is not None:
            row |= {f"teacher_{k}": v for k, v in metrics_against_teacher(prediction, teacher[i], _VGGT).items()}
        per_scene.append(row)
    return _mean(per_scene)


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    if not rows:
        raise ValueError("no scenes to evaluate on")
    return {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
