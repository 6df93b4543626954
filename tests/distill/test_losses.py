from __future__ import annotations

import math

import pytest
import torch

import lite3r
from lite3r.data import make_scene
from lite3r.distill import DistillConfig, LossWeights, distillation_losses, sla_layer_names
from lite3r.distill.losses import AttentionTaps, confidence_weighted_error, ground_truth_depth_error, relative_mse
from lite3r.models.vggt import VGGTConfig, vggt_family

VGGT = vggt_family(VGGTConfig())


def test_confidence_weighted_error_by_hand():
    teacher = torch.tensor([[[1.0], [2.0]]])  # [1, 2 pixels, 1]
    student = torch.tensor([[[1.5], [2.0]]])
    confidence = torch.tensor([[3.0, 1.0]])
    # (3 * 0.5 + 1 * 0) / (3 * 1 + 1 * 2)
    assert confidence_weighted_error(student, teacher, confidence).item() == pytest.approx(1.5 / 5)
    points_t, points_s = torch.tensor([[[3.0, 4.0, 0.0]]]), torch.tensor([[[0.0, 0.0, 0.0]]])
    assert confidence_weighted_error(points_s, points_t, torch.ones(1, 1)).item() == pytest.approx(1.0)


def test_relative_mse_is_scale_free_and_zero_at_the_teacher():
    teacher = torch.randn(2, 5, 8)
    assert relative_mse(teacher, teacher).item() == 0
    assert relative_mse(2 * teacher, teacher).item() == pytest.approx(1.0)
    assert relative_mse(200 * teacher, 100 * teacher).item() == pytest.approx(1.0)


def test_ground_truth_depth_error_ignores_scale_and_invalid_pixels():
    scene = make_scene(2, 28, 28, seed=1)
    pred = (3.0 * scene.depth).reshape(1, 2, 28, 28, 1)
    pred[~scene.valid.reshape(pred.shape[:-1])] = 123.0
    assert ground_truth_depth_error(pred, scene).item() == pytest.approx(0.0, abs=1e-6)
    assert ground_truth_depth_error(pred * 1.1 + 0.5, scene).item() > 0.01


def test_zero_weights_skip_terms_and_all_zero_is_an_error():
    out = {"pose_enc": torch.zeros(1, 2, 9), "depth": torch.ones(1, 2, 3, 3, 1), "depth_conf": torch.ones(1, 2, 3, 3)}
    student = {**out, "pose_enc": torch.ones(1, 2, 9)}
    total, terms = distillation_losses(student, out, {}, {}, LossWeights(0, 0, 0, 2.0), VGGT)
    assert terms == {"pose": 1.0} and total.item() == 2.0
    with pytest.raises(ValueError, match="every loss weight is zero"):
        distillation_losses(out, out, {}, {}, LossWeights(0, 0, 0, 0), VGGT)


def test_taps_record_only_inside_record():
    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-tiny").eval()
    student = lite3r.convert_to_sla(teacher)
    names = sla_layer_names(student)
    assert names == [f"aggregator.global_blocks.{i}.attn" for i in range(len(student.aggregator.global_blocks))]
    taps = AttentionTaps(student, names)
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad(), taps.record() as outputs:
        student(images)
    assert list(outputs) == names and outputs[names[0]].shape[-1] == student.config.embed_dim
    with torch.no_grad():
        student(torch.rand(2, 3, 28, 28))
    assert taps.outputs is outputs and all(torch.equal(outputs[n], taps.outputs[n]) for n in names)
    taps.remove()
    assert not student.get_submodule(names[0])._forward_hooks


def test_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    config = DistillConfig(lr=1.0, warmup_fraction=0.1, min_lr_fraction=0.1)
    lrs = [config.lr_at(step, 100) for step in range(100)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert DistillConfig().lr_at(0, 3) == DistillConfig().lr  # at least one warmup step, never zero


def test_distillation_losses_are_zero_for_identical_models():
    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-tiny").eval()
    images = torch.rand(2, 3, 28, 28)
    names = ["aggregator.global_blocks.0.attn"]
    taps = AttentionTaps(teacher, names)
    with torch.no_grad(), taps.record() as attention:
        out = teacher(images)
    total, terms = distillation_losses(out, out, attention, dict(attention), LossWeights(), teacher.family)
    assert total.item() == 0 and set(terms) == {"attention", "depth", "points", "pose"}


def test_da3_losses_use_its_depth_and_cameras_and_have_no_points_term():
    torch.manual_seed(0)
    teacher = lite3r.load_model("da3-tiny").eval()
    images = torch.rand(3, 3, 28, 28)
    names = sla_layer_names(lite3r.convert_to_sla(teacher))
    assert names == ["backbone.pretrained.blocks.3.attn", "backbone.pretrained.blocks.5.attn"]  # cross-view
    taps = AttentionTaps(teacher, names)
    with torch.no_grad(), taps.record() as attention:
        out = teacher(images)
    total, terms = distillation_losses(out, out, attention, dict(attention), LossWeights(), teacher.family)
    assert total.item() == 0 and set(terms) == {"attention", "depth", "pose"}
    moved = dict(out, extrinsics=out["extrinsics"] + torch.tensor([0.0, 0, 0, 0.1]))  # translations + 0.1
    _, terms = distillation_losses(moved, out, {}, {}, LossWeights(0, 0, 0, 1.0), teacher.family)
    assert terms["pose"] == pytest.approx(3 * 0.1 / 9, rel=1e-4)  # 3 of 9 pose-encoding values moved by 0.1

