from __future__ import annotations

import math

import pytest
import torch

from lite3r.data import make_scene
from lite3r.geometry import extri_intri_to_pose_encoding, quaternion_to_matrix, relative_to_first, transform_points
from lite3r.metrics import (
    chamfer_distance,
    depth_metrics,
    depth_scale,
    fscore,
    nearest_neighbor_distances,
    point_cloud_metrics,
    reconstruction_metrics,
    relative_pose_errors,
)
from lite3r.models.da3 import DA3Config, da3_family
from lite3r.models.vggt import VGGTConfig, vggt_family

VGGT, DA3 = vggt_family(VGGTConfig()), da3_family(DA3Config())


def _yaw(degrees: float) -> torch.Tensor:
    half = math.radians(degrees) / 2
    return quaternion_to_matrix(torch.tensor([0.0, math.sin(half), 0.0, math.cos(half)], dtype=torch.float64))


def _extrinsics(*poses):
    return torch.stack([torch.cat((rot, torch.tensor(t, dtype=torch.float64)[:, None]), dim=-1) for rot, t in poses])


def test_depth_metrics_by_hand():
    gt = torch.tensor([[[1.0, 2.0, 4.0, 9.0]]])
    pred = torch.tensor([[[1.0, 2.0, 2.0, 5.0]]])
    valid = torch.tensor([[[True, True, True, False]]])
    # median scale over valid pixels: median(1, 2, 4) / median(1, 2, 2) = 1
    metrics = depth_metrics(pred, gt, valid)
    assert metrics["depth_abs_rel"] == pytest.approx((0 + 0 + 2 / 4) / 3)
    assert metrics["depth_delta_1_25"] == pytest.approx(2 / 3)  # 4 / 2 = 2 fails the 1.25 ratio


def test_depth_is_aligned_per_view_and_perfect_up_to_scale():
    gt = 1 + torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0))
    pred = gt * torch.tensor([3.0, 0.5])[:, None, None]
    metrics = depth_metrics(pred, gt, torch.ones_like(gt, dtype=torch.bool), alignment="lstsq")
    assert metrics["depth_abs_rel"] == pytest.approx(0, abs=1e-6)
    assert metrics["depth_delta_1_25"] == 1.0


def test_depth_scale_methods():
    pred, gt = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 9.0])
    assert depth_scale(pred, gt, "median").item() == pytest.approx(1.0)  # median 2 / median 2
    assert depth_scale(pred, gt, "lstsq").item() == pytest.approx((2 + 4 + 27) / 14)
    with pytest.raises(ValueError, match="depth alignment"):
        depth_scale(pred, gt, "mean")


def test_depth_metrics_errors():
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="shapes differ"):
        depth_metrics(torch.ones(1, 2, 2), torch.ones(1, 2, 3), torch.ones(1, 2, 3, dtype=torch.bool))


def test_pose_errors_zero_for_the_same_poses_in_another_frame_and_scale():
    gt = _extrinsics((_yaw(0), [0, 0, 0]), (_yaw(30), [1, 0, 0]), (_yaw(-20), [0, 1, 2]))
    # Same rig seen from another world frame and at another scale: relative poses are unchanged.
    change = torch.cat((_yaw(77), torch.tensor([[0.3], [-2.0], [5.0]], dtype=torch.float64)), dim=-1)
    pred = torch.cat((gt[..., :3] @ change[:, :3], gt[..., :3] @ change[:, 3:] + gt[..., 3:]), dim=-1)
    pred[..., 3] *= 4
    errors = relative_pose_errors(pred, gt)
    assert errors == pytest.approx(dict.fromkeys(errors, 0.0), abs=1e-5)


def test_pose_errors_by_hand():
    gt = _extrinsics((_yaw(0), [0, 0, 0]), (_yaw(0), [1, 0, 0]))
    pred = _extrinsics((_yaw(0), [0, 0, 0]), (_yaw(90), [0, 1, 0]))
    errors = relative_pose_errors(pred, gt)
    assert errors["rotation_error_deg"] == pytest.approx(90)
    assert errors["translation_error_deg"] == pytest.approx(90)
    # centres: gt (-1, 0, 0); pred -Rᵀ(0, 1, 0) = (0, -1, 0), orthogonal, so the best scale is 0: error 1.
    assert errors["camera_center_error"] == pytest.approx(1.0)


def test_pose_errors_single_view_is_nan():
    errors = relative_pose_errors(torch.eye(3, 4)[None], torch.eye(3, 4)[None])
    assert all(math.isnan(v) for v in errors.values())


def test_point_cloud_metrics_by_hand():
    pred = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    gt = torch.tensor([[0.0, 0, 0]])
    # pred -> gt: 0 and 1 (mean 0.5); gt -> pred: 0. Precision 1/2, recall 1 at threshold 0.5.
    assert chamfer_distance(pred, gt) == pytest.approx(0.25)
    assert fscore(pred, gt, threshold=0.5) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert chamfer_distance(torch.zeros(1, 3), torch.tensor([[3.0, 4.0, 0.0]])) == pytest.approx(5)
    assert fscore(torch.zeros(1, 3), torch.tensor([[3.0, 4.0, 0.0]]), threshold=1) == 0


def test_point_cloud_metrics_identical_clouds():
    cloud = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * 10
    assert point_cloud_metrics(cloud, cloud.flip(0), threshold=1e-3) == {"chamfer": 0.0, "fscore": 1.0}


def test_nearest_neighbors_chunked_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    query, reference = torch.randn(300, 3, generator=g), torch.randn(170, 3, generator=g)
    brute = (query[:, None] - reference[None]).norm(dim=-1).amin(-1)
    torch.testing.assert_close(nearest_neighbor_distances(query, reference, chunk_size=64), brute)
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbor_distances(query, reference[:0])


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, 56, 70, seed=4)


def _perfect_prediction(scene, scale=2.5):
    """What an exact VGGT would output: view 0's frame, one arbitrary scale, batch dim of 1."""
    height, width = scene.depth.shape[1:]
    pose_enc = extri_intri_to_pose_encoding(relative_to_first(scene.extrinsics), scene.intrinsics, (height, width))
    pose_enc[..., :3] *= scale
    points = transform_points(scene.world_points, scene.extrinsics[:1].expand(3, 3, 4))
    depth = scale * scene.depth[None, ..., None]
    return {"pose_enc": pose_enc[None], "depth": depth, "world_points": scale * points[None]}


def test_reconstruction_metrics_perfect_prediction(scene):
    metrics = reconstruction_metrics(_perfect_prediction(scene), scene, VGGT, max_points=2000)
    assert all(isinstance(v, float) for v in metrics.values())
    expected = {
        "depth_abs_rel": 0, "depth_delta_1_25": 1, "rotation_error_deg": 0, "translation_error_deg": 0,
        "camera_center_error": 0, "fov_error_deg": 0, "pointmap_chamfer": 0, "pointmap_fscore": 1,
        "depth_points_chamfer": 0, "depth_points_fscore": 1,
    }  # fmt: skip
    assert metrics == pytest.approx(expected, abs=1e-4)


def test_reconstruction_metrics_see_each_kind_of_error(scene):
    perfect = _perfect_prediction(scene)
    flips = torch.randint(0, 2, perfect["depth"].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noisy_depth = dict(perfect, depth=perfect["depth"] * 1.2**flips)
    rotated = dict(perfect, pose_enc=perfect["pose_enc"].clone())
    rotated["pose_enc"][0, 1, 3:7] = torch.tensor([0.0, math.sin(0.1), 0.0, math.cos(0.1)])  # view 1 turned
    metrics = reconstruction_metrics(noisy_depth, scene, VGGT, max_points=2000)
    assert metrics["depth_abs_rel"] > 0.1 and metrics["depth_points_chamfer"] > 0.01
    assert metrics["rotation_error_deg"] < 1e-3 and metrics["pointmap_chamfer"] < 1e-5
    metrics = reconstruction_metrics(rotated, scene, VGGT, max_points=2000)
    assert metrics["rotation_error_deg"] > 1 and metrics["depth_points_fscore"] < 1
    assert metrics["depth_abs_rel"] < 1e-5


def test_reconstruction_metrics_reject_mismatched_predictions(scene):
    perfect = _perfect_prediction(scene)
    message = r"predictions\['depth'\] has shape \[1, 3, 56, 70, 2\], expected \[3, 56, 70, 1\]"
    with pytest.raises(ValueError, match=message):
        reconstruction_metrics(dict(perfect, depth=perfect["depth"].expand(1, 3, 56, 70, 2)), scene, VGGT)
    with pytest.raises(ValueError, match="lack 'world_points'"):
        reconstruction_metrics({k: v for k, v in perfect.items() if k != "world_points"}, scene, VGGT)


def test_reconstruction_metrics_of_a_family_without_a_point_map(scene):
    """DA3's outputs: depth without a channel, cameras as extrinsics/intrinsics; depth points only."""
    height, width = scene.depth.shape[1:]
    extrinsics = relative_to_first(scene.extrinsics)
    extrinsics[..., 3] *= 2.5
    perfect = {"depth": 2.5 * scene.depth[None], "extrinsics": extrinsics[None], "intrinsics": scene.intrinsics[None]}
    metrics = reconstruction_metrics(perfect, scene, DA3, max_points=2000)
    assert not any(k.startswith("pointmap") for k in metrics)
    expected = {"depth_abs_rel": 0, "rotation_error_deg": 0, "fov_error_deg": 0, "depth_points_chamfer": 0}
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-4)
    turned = extrinsics.clone()
    turned[1, :, :3] = _yaw(5).float() @ turned[1, :, :3]
    assert reconstruction_metrics(dict(perfect, extrinsics=turned[None]), scene, DA3)["rotation_error_deg"] > 1
    with pytest.raises(ValueError, match="lack 'intrinsics'"):
        reconstruction_metrics({k: v for k, v in perfect.items() if k != "intrinsics"}, scene, DA3)

