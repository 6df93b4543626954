from __future__ import annotations

import copy
import json

import pytest
import torch

import lite3r
from lite3r.distill import DistillConfig, DistillError, distill, gap_to_teacher, load_student

FAST = DistillConfig(lr=1e-2)


def _outputs(model, scene):
    with torch.no_grad():
        return model(scene.images)


def test_only_proj_lin_receives_gradients_and_the_teacher_is_untouched(teacher, scenes):
    before = copy.deepcopy(teacher.state_dict())
    student = lite3r.convert_to_sla(teacher)
    distill(teacher, student, scenes, steps=1, fp8_qat=False)
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in student.named_parameters() if ".proj_lin." in n}
    assert all(student.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
    assert all(p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_da3_student_distills_through_the_same_code(scenes):
    torch.manual_seed(0)
    teacher = lite3r.load_model("da3-tiny").eval()
    student = lite3r.convert_to_sla(teacher, kh=0.2, kl=0.2)
    gap_before = gap_to_teacher(teacher, student, scenes)
    result = distill(teacher, student, scenes, steps=3, fp8_qat=False, config=FAST)
    assert {"attention", "depth", "pose"} <= result.history[0].keys() and "points" not in result.history[0]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert gap_to_teacher(teacher, student, scenes)["depth_abs_rel"] < gap_before["depth_abs_rel"]


def test_loss_and_gap_to_teacher_decrease(teacher, scenes):
    student = lite3r.convert_to_sla(teacher)
    gap_before = gap_to_teacher(teacher, student, scenes)
    result = distill(teacher, student, scenes, steps=5, fp8_qat=False, config=FAST)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert {"attention", "depth", "points", "pose", "lr", "grad_norm", "time_s"} <= result.history[0].keys()
    gap_after = gap_to_teacher(teacher, student, scenes)
    assert gap_after["pose_enc_l1"] < 0.7 * gap_before["pose_enc_l1"]


def test_qat_student_reloads_with_the_same_outputs(teacher, scenes, tmp_path):
    result = distill(teacher, lite3r.convert_to_sla(teacher), scenes, steps=1, config=FAST, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt", "log.jsonl", "quant_state.json", "student.safetensors"
    ]  # fmt: skip
    reloaded = load_student(teacher, tmp_path)
    expected, got = _outputs(result.student, scenes[0]), _outputs(reloaded, scenes[0])
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    unquantized = _outputs(load_student(teacher, tmp_path, fp8=False), scenes[0])
    assert not torch.equal(unquantized["pose_enc"], expected["pose_enc"])  # the FP8 scales were applied


def test_resume_continues_exactly_where_the_checkpoint_stopped(teacher, scenes, tmp_path):
    config = DistillConfig(lr=1e-2, checkpoint_every=1)
    straight = distill(teacher, lite3r.convert_to_sla(teacher), scenes, 3, fp8_qat=False, config=config)
    distill(teacher, lite3r.convert_to_sla(teacher), scenes, 2, fp8_qat=False, config=config, out_dir=tmp_path)
    with open(tmp_path / "log.jsonl", "a") as log:  # a step logged after the last checkpoint, then a crash
        log.write(json.dumps({"step": 2, "loss": -1.0}) + "\n")
    student = lite3r.convert_to_sla(teacher)
    resumed = distill(teacher, student, scenes, 3, fp8_qat=False, config=config, out_dir=tmp_path)
    assert [r["step"] for r in resumed.history] == [2]
    for key, value in straight.student.state_dict().items():
        assert torch.equal(resumed.student.state_dict()[key], value), key
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in straight.history]


def test_a_student_with_other_trainable_parameters_is_refused(teacher, scenes):
    student = lite3r.convert_to_sla(teacher)
    student.camera_head.requires_grad_(True)
    with pytest.raises(DistillError, match=r"only SLA proj_lin may be trained, but \d+ other parameters .*camera_head"):
        distill(teacher, student, scenes, steps=1, fp8_qat=False)
    with pytest.raises(DistillError, match="the student is the teacher"):
        distill(teacher, teacher, scenes, steps=1, fp8_qat=False)
    with pytest.raises(DistillError, match="no trainable parameters"):
        distill(teacher, copy.deepcopy(teacher).requires_grad_(False), scenes, steps=1, fp8_qat=False)


def test_bad_runs_fail_with_one_clear_error(teacher, scenes, tmp_path):
    student = lite3r.convert_to_sla(teacher)
    with pytest.raises(DistillError, match="steps must be at least 1"):
        distill(teacher, student, scenes, steps=0)
    with pytest.raises(DistillError, match="training data is empty"):
        distill(teacher, student, [], steps=1, fp8_qat=False)
    distill(teacher, student, scenes, steps=1, fp8_qat=False, out_dir=tmp_path)
    with pytest.raises(DistillError, match="trained without fp8_qat; resume it with fp8_qat=False"):
        distill(teacher, lite3r.convert_to_sla(teacher), scenes, steps=2, fp8_qat=True, out_dir=tmp_path)
