"""``DistillConfig(trainable="all")``: the full fine-tuning control trains every parameter the caller opened."""

from __future__ import annotations

import pytest

import lite3r
from lite3r.distill import DistillConfig, DistillError, distill


def test_all_trains_every_parameter_the_student_lets_train(teacher, scenes):
    student = lite3r.convert_to_sla(teacher).requires_grad_(True)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    distill(teacher, student, scenes, steps=1, fp8_qat=False, config=DistillConfig(lr=1e-3, trainable="all"))
    changed = {n for n, p in student.named_parameters() if not p.detach().equal(before[n])}
    assert any(".proj_lin." in n for n in changed)
    assert any(n.startswith("aggregator.frame_blocks.") for n in changed)  # not only proj_lin
    with pytest.raises(DistillError, match="only SLA proj_lin may be trained"):
        distill(teacher, student, scenes, steps=1, fp8_qat=False)  # the default stays proj_lin only
    with pytest.raises(DistillError, match="trainable must be 'proj_lin' or 'all'"):
        distill(teacher, student, scenes, steps=1, fp8_qat=False, config=DistillConfig(trainable="heads"))
