from __future__ import annotations

import copy
import json

import pytest
import torch

import lite3r
from lite3r.data import make_scene
from lite3r.distill import DistillConfig, DistillError, distill, distillation_losses, gap_to_teacher, load_student
from lite3r.distill.losses import AttentionTaps, sla_layer_names

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


def test_student_files_keep_dense_tokens_and_older_files_load_as_plain_sla(teacher, tmp_path):
    """``dense_tokens`` travels in the file; a file written before it existed (no key) is a plain SLA student and
    must not pick up the new default."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lite3r.distill import save_student
    from lite3r.sla import SparseLinearAttention

    def dense_tokens(model):
        return {m.dense_tokens for m in model.modules() if isinstance(m, SparseLinearAttention)}

    for value in (0, 2):
        (tmp_path / str(value)).mkdir()
        save_student(lite3r.convert_to_sla(teacher, dense_tokens=value), tmp_path / str(value))
        assert dense_tokens(load_student(teacher, tmp_path / str(value))) == {value}
    path = tmp_path / "2" / "student.safetensors"
    with safe_open(path, "pt") as f:
        options = json.loads(f.metadata()["sla_options"])
    del options["dense_tokens"]
    save_file(load_file(path), path, metadata={"sla_options": json.dumps(options)})
    assert dense_tokens(load_student(teacher, tmp_path / "2")) == {0}


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


@pytest.fixture(scope="module")
def small_scenes():
    return [make_scene(2, 56, 56, seed=seed) for seed in range(3)]


def test_a_batch_step_is_the_mean_loss_of_its_scenes(teacher, small_scenes):
    """batch_size 2, one step, by hand: mean of the two scenes' losses, backward, clip, one AdamW step."""
    config = DistillConfig(lr=1e-2, batch_size=2, shuffle=False, grad_clip=0.05)  # the clip is active
    # Plain SLA: with dense tokens the gradient here is 3e-4, too small to exercise the clip (at 2 frames of 56x56
    # the camera rows, which carry the pose term, would no longer pass through proj_lin).
    result = distill(teacher, lite3r.convert_to_sla(teacher, dense_tokens=0), small_scenes, 1, fp8_qat=False,
                     config=config)  # fmt: skip

    student = lite3r.convert_to_sla(teacher, dense_tokens=0)
    names = sla_layer_names(student)
    taps = AttentionTaps(teacher, names), AttentionTaps(student, names)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr_at(0, 1), weight_decay=config.weight_decay)
    losses = []
    for scene in small_scenes[:2]:
        with torch.no_grad(), taps[0].record() as teacher_attention:
            teacher_out = teacher(scene.images)
        with taps[1].record() as student_attention:
            student_out = student(scene.images)
        losses.append(distillation_losses(student_out, teacher_out, student_attention, teacher_attention,
                                          config.weights, teacher.family, scene)[0])  # fmt: skip
    loss = torch.stack(losses).mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    assert result.history[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert result.history[0]["grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-5)
    assert grad_norm > config.grad_clip
    for name, value in student.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(result.student.get_parameter(name), value, rtol=1e-5, atol=1e-7)


def test_teacher_cache_gives_the_same_training_and_runs_the_teacher_once_per_scene(teacher, small_scenes, tmp_path):
    config = DistillConfig(lr=1e-2, batch_size=2, teacher_cache=True)
    plain = distill(teacher, lite3r.convert_to_sla(teacher), small_scenes, 3, fp8_qat=False,
                    config=DistillConfig(lr=1e-2, batch_size=2))  # fmt: skip
    student, calls = lite3r.convert_to_sla(teacher), []
    hook = teacher.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = distill(teacher, student, small_scenes, 3, fp8_qat=False, config=config, out_dir=tmp_path)
    finally:
        hook.remove()
    assert len(calls) == len(small_scenes)  # 6 scenes trained on (2 epochs), 3 teacher forwards
    assert sorted(p.name for p in (tmp_path / "teacher_cache").iterdir()) == [
        "manifest.json", "scene_000000.safetensors", "scene_000001.safetensors", "scene_000002.safetensors"
    ]  # fmt: skip
    assert [r["loss"] for r in cached.history] == [r["loss"] for r in plain.history]
    for key, value in plain.student.state_dict().items():
        assert torch.equal(cached.student.state_dict()[key], value), key

    with pytest.raises(ValueError, match="teacher targets for other settings"):  # 2 scenes instead of 3
        distill(teacher, lite3r.convert_to_sla(teacher), small_scenes[:2], 4, fp8_qat=False, config=config,
                out_dir=tmp_path)  # fmt: skip
    with pytest.raises(DistillError, match="teacher_cache needs out_dir"):
        distill(teacher, lite3r.convert_to_sla(teacher), small_scenes, 1, fp8_qat=False, config=config)


def test_batch_size_errors(teacher, small_scenes, tmp_path):
    student = lite3r.convert_to_sla(teacher)
    with pytest.raises(DistillError, match=r"batch_size must be a positive multiple of the number of processes \(1\)"):
        distill(teacher, student, small_scenes, 1, fp8_qat=False, config=DistillConfig(batch_size=0))
    distill(teacher, student, small_scenes, 1, fp8_qat=False, config=DistillConfig(batch_size=2), out_dir=tmp_path)
    with pytest.raises(DistillError, match="trained with batch_size 2; resume with the same"):
        distill(teacher, lite3r.convert_to_sla(teacher), small_scenes, 2, fp8_qat=False, out_dir=tmp_path)
