"""The VGGT training objective: ground-truth normalisation, camera loss, confidence-weighted regression."""

from __future__ import annotations

import math

import pytest
import torch

from lite3r.data import make_scene
from lite3r.geometry import extri_intri_to_pose_encoding
from lite3r.train.losses import (
    LossConfig,
    camera_loss,
    gradient_loss,
    normalize_scene,
    regression_loss,
    vggt_loss,
)


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, 28, 42, seed=3)


def _targets(scene, world_scale: float = 1.0):
    extrinsics = scene.extrinsics.clone()
    extrinsics[..., 3] *= world_scale  # the same scene, `world_scale` times larger
    return normalize_scene(extrinsics[None], scene.intrinsics[None], scene.depth[None] * world_scale,
                           scene.valid[None])  # fmt: skip


def test_targets_are_in_camera_0_at_unit_mean_distance(scene):
    t = _targets(scene)
    torch.testing.assert_close(t.pose_enc[0, 0, :7], torch.tensor([0, 0, 0, 0, 0, 0, 1.0]), atol=1e-6, rtol=0)
    assert t.world_points[t.valid].norm(dim=-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(t.world_points[0, 0, ..., 2], t.depth[0, 0])  # camera 0's z is its depth
    assert torch.all(t.world_points[~t.valid] == 0) and torch.all(t.depth[~t.valid] == 0)
    assert t.scale.item() == pytest.approx(scene.depth[scene.valid].mean().item(), rel=0.5)  # same order


def test_targets_do_not_depend_on_the_world_scale(scene):
    small, large = _targets(scene), _targets(scene, world_scale=3.0)
    assert large.scale.item() == pytest.approx(3 * small.scale.item(), rel=1e-5)
    for field in ("pose_enc", "depth", "world_points"):
        torch.testing.assert_close(getattr(small, field), getattr(large, field), atol=1e-5, rtol=1e-5)


def test_camera_loss_weights_the_later_iterations_more():
    target = torch.zeros(1, 2, 9)
    config = LossConfig()
    exact = camera_loss([target.clone(), target.clone()], target, config)
    assert all(v.item() == 0 for v in exact.values())
    off = target.clone()
    off[..., 3:7] += 0.5  # rotation part only, |error| 0.5 everywhere
    # Iteration 0 of 2 weighs 0.6, iteration 1 weighs 1; both are averaged over the 2 iterations.
    assert camera_loss([off, target], target, config)["camera_r"].item() == pytest.approx(0.5 * 0.6 / 2)
    assert camera_loss([target, off], target, config)["camera_r"].item() == pytest.approx(0.5 * 1.0 / 2)
    assert camera_loss([target, off], target, config)["camera_t"].item() == 0


def test_regression_loss_terms():
    config = LossConfig(quantile=1.0)
    gt = torch.rand(1, 2, 8, 8, 3) + 1
    valid = torch.ones(1, 2, 8, 8, dtype=torch.bool)
    conf = torch.full((1, 2, 8, 8), 2.0)
    exact = regression_loss(gt, gt, conf, valid, config)
    assert exact["reg"].item() == 0 and exact["grad"].item() == 0
    assert exact["conf"].item() == pytest.approx(-0.2 * math.log(2.0))
    shifted = regression_loss(gt + torch.tensor([0.3, 0.0, 0.4]), gt, conf, valid, config)
    assert shifted["reg"].item() == pytest.approx(0.5, rel=1e-5)  # Euclidean norm of the offset
    assert shifted["grad"].item() == pytest.approx(0, abs=1e-6)  # a constant offset has no gradient
    assert shifted["conf"].item() == pytest.approx(2.0 * 0.5 - 0.2 * math.log(2.0), rel=1e-5)


def test_gradient_loss_ignores_pairs_with_an_invalid_pixel():
    error = torch.zeros(1, 4, 4, 1)
    error[0, 1, 1] = 1.0  # one bad pixel
    conf = torch.ones(1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    assert gradient_loss(error, conf, valid, scales=1).item() == pytest.approx(4 / 16)  # its 4 edges
    valid[0, 1, 1] = False
    assert gradient_loss(error, conf, valid, scales=1).item() == 0


def test_outliers_above_the_quantile_are_dropped():
    gt = torch.zeros(1, 1, 40, 40, 1)
    pred = gt.clone()
    pred[0, 0, 0, 0] = 1000.0  # one outlier in 1600 pixels
    valid = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    conf = torch.ones(1, 1, 40, 40)
    assert regression_loss(pred, gt, conf, valid, LossConfig(quantile=0.98))["reg"].item() == 0
    assert regression_loss(pred, gt, conf, valid, LossConfig(quantile=1.0))["reg"].item() == pytest.approx(1000 / 1600)


def test_total_is_the_weighted_sum_of_the_terms(scene):
    t = _targets(scene)
    outputs = {
        "depth": t.depth[..., None] + 0.1,
        "depth_conf": torch.full_like(t.depth, 1.5),
        "world_points": t.world_points - 0.2,
        "world_points_conf": torch.full_like(t.depth, 1.5),
    }
    poses = [extri_intri_to_pose_encoding(torch.eye(3, 4).expand(1, 3, 3, 4), scene.intrinsics[None], (28, 42))]
    config = LossConfig()
    total, terms = vggt_loss(outputs, poses, t, config)
    camera = terms["camera_t"] + terms["camera_r"] + 0.5 * terms["camera_fov"]
    regression = sum(v for k, v in terms.items() if k.startswith(("depth_", "points_")))
    torch.testing.assert_close(total, 5 * camera + regression)
    assert terms["camera_t"] > 0 and terms["depth_reg"] > 0 and terms["points_reg"] > 0
