"""Distillation losses: attention outputs of the SLA layers, the heads' outputs, and optional ground truth.

All terms are dimensionless, so one set of default weights works for ``vggt-tiny``, a random-weight VGGT-1B,
the released checkpoint and DA3 alike (the model family says where depth, points and cameras are):

- ``attention``: per SLA layer, ``MSE(student, teacher) / mean(teacher²)`` of the attention module's output
  (after ``proj``), averaged over layers ("partial attention distillation": only the converted layers).
- ``depth`` / ``points``: ``Σ c·|student - teacher| / Σ c·|teacher|`` per pixel, weighted by the teacher's
  confidence ``c`` (``depth_conf`` / ``world_points_conf``); for points ``|·|`` is the Euclidean norm. Only a
  family with a point map (VGGT) has the ``points`` term.
- ``pose``: mean absolute difference of the 9-value pose encodings of the cameras (VGGT's ``pose_enc``; DA3's
  extrinsics and intrinsics encoded the same way).
- ``gt_depth`` (scenes with ground truth only): per view, AbsRel of the student depth scaled by
  ``median(gt) / median(pred)`` on valid pixels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from lite3r.data.synthetic import Scene
from lite3r.models import ModelFamily
from lite3r.models.attention import Attention
from lite3r.sla.module import SparseLinearAttention


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (a zero weight skips the term). Ground truth is off by default: the goal is
    to match the teacher, and a random-weight teacher has nothing to do with the scene's truth."""

    attention: float = 1.0
    depth: float = 1.0
    points: float = 1.0
    pose: float = 1.0
    gt_depth: float = 0.0


def sla_layer_names(student: nn.Module) -> list[str]:
    """Names of the student's attention layers whose core is SLA (the layers attention distillation taps)."""
    return [
        n for n, m in student.named_modules() if isinstance(m, Attention) and isinstance(m.core, SparseLinearAttention)
    ]


class AttentionTaps:
    """Forward hooks that keep the outputs of named attention layers while :meth:`record` is active.

    Recording is switched off outside the model's forward so that gradient checkpointing, which runs the
    layers again in the backward pass, does not overwrite the outputs the loss was computed from.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._recording = False
        self._handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def keep(module, args, output):
            if self._recording:
                self.outputs[name] = output

        return keep

    @contextlib.contextmanager
    def record(self) -> Iterator[dict[str, torch.Tensor]]:
        self.outputs = {}
        self._recording = True
        try:
            yield self.outputs
        finally:
            self._recording = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def distillation_losses(
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor],
    student_attention: dict[str, torch.Tensor],
    teacher_attention: dict[str, torch.Tensor],
    weights: LossWeights,
    family: ModelFamily,
    scene: Scene | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted total and each term's value (terms with zero weight, or that ``family`` has no output for,
    are not computed)."""
    terms: dict[str, torch.Tensor] = {}
    if weights.attention:
        terms["attention"] = torch.stack(
            [relative_mse(student_attention[n], teacher_attention[n]) for n in teacher_attention]
        ).mean()
    if weights.depth:
        depth_student, depth_teacher = (family.depth(out)[..., None] for out in (student, teacher))
        terms["depth"] = confidence_weighted_error(depth_student, depth_teacher, teacher["depth_conf"])
    if weights.points and family.points is not None:
        points = family.points
        terms["points"] = confidence_weighted_error(student[points], teacher[points], teacher[f"{points}_conf"])
    if weights.pose:
        size = tuple(family.depth(teacher).shape[-2:])
        pose_student, pose_teacher = (family.pose_encoding(out, size).float() for out in (student, teacher))
        terms["pose"] = (pose_student - pose_teacher.detach()).abs().mean()
    if weights.gt_depth and scene is not None:
        terms["gt_depth"] = ground_truth_depth_error(family.depth(student), scene)
    if not terms:
        raise ValueError("every loss weight is zero: nothing to train")
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: value.item() for name, value in terms.items()}


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    teacher = teacher.detach().float()
    return (student.float() - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


def confidence_weighted_error(student: torch.Tensor, teacher: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """``Σ c·|s - t| / Σ c·|t|`` over pixels; ``student``, ``teacher`` ``[..., H, W, C]``, ``c`` ``[..., H, W]``."""
    teacher, confidence = teacher.detach().float(), confidence.detach().float()
    error = (student.float() - teacher).norm(dim=-1)
    return (confidence * error).sum() / (confidence * teacher.norm(dim=-1)).sum().clamp_min(1e-12)


def ground_truth_depth_error(depth: torch.Tensor, scene: Scene) -> torch.Tensor:
    """Mean over views of the median-scaled AbsRel of ``depth [1, S, H, W]`` against the scene's depth."""
    pred = depth.float().reshape(scene.depth.shape)
    gt, valid = scene.depth.to(pred.device), (scene.valid & (scene.depth > 0)).to(pred.device)
    errors = []
    for p, g, m in zip(pred, gt, valid):
        if m.any():
            p, g = p[m], g[m]
            scale = (g.median() / p.detach().median().clamp_min(1e-12)).detach()
            errors.append(((scale * p - g).abs() / g).mean())
    if not errors:
        return pred.sum() * 0
    return torch.stack(errors).mean()
