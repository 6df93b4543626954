"""How far a student is from its teacher on held-out scenes: the numbers distillation must bring down."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from lite3r.calibration.fp8 import autocast
from lite3r.data.datasets import item_images
from lite3r.metrics import prediction_gap
from lite3r.models import family_of


def gap_to_teacher(
    teacher: nn.Module, student: nn.Module, data: Iterable[Any], *, bf16: bool = True
) -> dict[str, float]:
    """Mean over scenes of :func:`lite3r.metrics.prediction_gap` of the student against the teacher."""
    device = next(student.parameters()).device
    totals: dict[str, float] = {}
    scenes = 0
    for item in data:
        images = item_images(item).to(device)
        with torch.no_grad(), autocast(device, bf16):
            reference, pred = teacher(images), student(images)
        for key, value in prediction_gap(pred, reference, images.shape[-2:], family_of(teacher)).items():
            totals[key] = totals.get(key, 0.0) + value
        scenes += 1
    if not scenes:
        raise ValueError("no scenes to evaluate on")
    return {key: value / scenes for key, value in totals.items()}
