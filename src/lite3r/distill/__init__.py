"""Teacher -> SLA student distillation with FP8-aware training (ModelOpt fake quantizers, straight-through).

ModelOpt is imported only when quantization runs, so importing this package stays light.
"""

from __future__ import annotations

from lite3r.distill.checkpoint import StudentFileError, load_student, save_student
from lite3r.distill.evaluate import gap_to_teacher
from lite3r.distill.losses import LossWeights, distillation_losses, sla_layer_names
from lite3r.distill.train import DistillConfig, DistillError, DistillResult, default_data, distill

__all__ = [
    "DistillConfig",
    "DistillError",
    "DistillResult",
    "LossWeights",
    "StudentFileError",
    "default_data",
    "distill",
    "distillation_losses",
    "gap_to_teacher",
    "load_student",
    "save_student",
    "sla_layer_names",
]
