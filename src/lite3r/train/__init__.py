"""Training a teacher from scratch: the VGGT objective on synthetic scenes with ground truth.

``lite3r train-teacher`` is the command line over :func:`train_teacher`.
"""

from __future__ import annotations

from lite3r.train.data import DISTILL_SEED, HELD_OUT_SEED, ScenePool, held_out_scenes
from lite3r.train.evaluate import errors_vs_ground_truth, evaluate, predict
from lite3r.train.losses import LossConfig, SceneTargets, normalize_scene, vggt_loss
from lite3r.train.teacher import TeacherConfig, TeacherResult, TrainError, train_teacher

__all__ = [
    "DISTILL_SEED",
    "HELD_OUT_SEED",
    "LossConfig",
    "SceneTargets",
    "ScenePool",
    "TeacherConfig",
    "TeacherResult",
    "TrainError",
    "errors_vs_ground_truth",
    "evaluate",
    "held_out_scenes",
    "normalize_scene",
    "predict",
    "train_teacher",
    "vggt_loss",
]
