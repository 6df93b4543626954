from __future__ import annotations

import math

import pytest
import torch

from lite3r.geometry import (
    camera_centers,
    compose_extrinsics,
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    invert_extrinsics,
    matrix_to_quaternion,
    pixel_grid,
    pose_encoding_to_extri_intri,
    project,
    quaternion_to_matrix,
    relative_to_first,
    rotation_angle_deg,
    transform_points,
)


def _random_cameras(*lead, height=98, width=126, seed=0):
    g = torch.Generator().manual_seed(seed)
    rotation = quaternion_to_matrix(torch.randn(*lead, 4, generator=g))
    extrinsics = torch.cat((rotation, torch.randn(*lead, 3, 1, generator=g)), dim=-1)
    intrinsics = torch.zeros(*lead, 3, 3)
    intrinsics[..., 0, 0] = 80 + 40 * torch.rand(lead, generator=g)
    intrinsics[..., 1, 1] = 80 + 40 * torch.rand(lead, generator=g)
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1
    return extrinsics, intrinsics


def test_quaternion_matrix_known_rotation():
    half = math.radians(90) / 2
    rotation = quaternion_to_matrix(torch.tensor([0.0, 0.0, math.sin(half), math.cos(half)]))  # 90° about z
    torch.testing.assert_close(rotation, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6, rtol=0)
    assert rotation_angle_deg(rotation).item() == pytest.approx(90, abs=1e-4)


def test_quaternion_round_trip_is_orthonormal_and_standardised():
    q = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(1))
    rotation = quaternion_to_matrix(q)
    identity = torch.eye(3).expand(6, 5, 3, 3)
    torch.testing.assert_close(rotation @ rotation.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(6, 5))
    q_back = matrix_to_quaternion(rotation)
    unit = q / q.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(q_back, torch.where(unit[..., 3:] < 0, -unit, unit), atol=1e-5, rtol=0)
    assert torch.all(q_back[..., 3] >= 0)


def test_matrix_to_quaternion_near_180_degrees():
    # w ~ 0: the pivot must switch to x, y or z to stay accurate.
    rotation = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180° about x
    torch.testing.assert_close(matrix_to_quaternion(rotation), torch.tensor([1.0, 0, 0, 0]))


def test_pose_encoding_round_trip():
    extrinsics, intrinsics = _random_cameras(2, 5)
    encoding = extri_intri_to_pose_encoding(extrinsics, intrinsics, (98, 126))
    assert encoding.shape == (2, 5, 9)
    torch.testing.assert_close(encoding[..., :3], extrinsics[..., 3])
    extrinsics_back, intrinsics_back = pose_encoding_to_extri_intri(encoding, (98, 126))
    torch.testing.assert_close(extrinsics_back, extrinsics, atol=1e-5, rtol=0)
    torch.testing.assert_close(intrinsics_back, intrinsics, atol=1e-3, rtol=1e-5)


def test_pose_encoding_field_of_view():
    intrinsics = torch.tensor([[50.0, 0, 50], [0, 25, 30], [0, 0, 1]])
    encoding = extri_intri_to_pose_encoding(torch.eye(3, 4), intrinsics, (60, 100))
    # tan(fov_h / 2) = 30 / 25, tan(fov_w / 2) = 50 / 50
    torch.testing.assert_close(encoding, torch.tensor([0, 0, 0, 0, 0, 0, 1, 2 * math.atan(1.2), math.pi / 2]))


def test_zero_field_of_view_decodes_to_a_finite_focal_length():
    # A ReLU'd field of view can be exactly 0; like DA3's decoder, tan(fov / 2) is clamped at 1e-6.
    encoding = torch.tensor([0.0, 0, 0, 0, 0, 0, 1, 0, math.pi / 2])
    _, intrinsics = pose_encoding_to_extri_intri(encoding, (60, 100))
    torch.testing.assert_close(intrinsics[:2, :2], torch.tensor([[50.0, 0], [0, 30 / 1e-6]]))


def test_pose_encoding_rejects_wrong_size():
    with pytest.raises(ValueError, match="9 values"):
        pose_encoding_to_extri_intri(torch.zeros(3, 7), (14, 14))


def test_depth_to_world_points_then_project_is_identity():
    extrinsics, intrinsics = _random_cameras(3)
    depth = 1 + torch.rand(3, 98, 126, generator=torch.Generator().manual_seed(2))
    points = depth_to_world_points(depth, extrinsics, intrinsics)
    assert points.shape == (3, 98, 126, 3)
    uv, z = project(points, extrinsics, intrinsics)
    torch.testing.assert_close(z, depth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uv, pixel_grid(98, 126).expand(3, 98, 126, 2), atol=2e-3, rtol=0)


def test_depth_to_world_points_by_hand():
    # Camera at world (0, 0, -2) looking along +z; pixel (u=3, v=1) with f=2, c=(1, 1) at depth 4.
    extrinsics = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2]])
    intrinsics = torch.tensor([[2.0, 0, 1], [0, 2, 1], [0, 0, 1]])
    depth = torch.full((2, 4), 4.0)
    points = depth_to_world_points(depth, extrinsics, intrinsics)
    torch.testing.assert_close(points[1, 3], torch.tensor([4.0, 0.0, 2.0]))  # x = (3-1)/2*4, z = 4 - 2


def test_inverse_compose_centres_and_relative_frame():
    extrinsics, _ = _random_cameras(4)
    identity = torch.eye(3, 4).expand(4, 3, 4)
    round_trip = compose_extrinsics(extrinsics, invert_extrinsics(extrinsics))
    torch.testing.assert_close(round_trip, identity, atol=1e-5, rtol=0)
    centres = camera_centers(extrinsics)
    torch.testing.assert_close(transform_points(centres, extrinsics), torch.zeros(4, 3), atol=1e-5, rtol=0)
    relative = relative_to_first(extrinsics)
    torch.testing.assert_close(relative[0], torch.eye(3, 4), atol=1e-5, rtol=0)
    # A point keeps its camera coordinates when the world frame moves to camera 0.
    world = torch.randn(4, 10, 3)
    in_first = transform_points(world, extrinsics[:1].expand(4, 3, 4))
    in_cameras = transform_points(world, extrinsics)
    torch.testing.assert_close(transform_points(in_first, relative), in_cameras, atol=1e-5, rtol=0)


def test_rotation_angle_is_exact_near_zero():
    tiny = quaternion_to_matrix(torch.tensor([0.0, math.sin(1e-4), 0.0, math.cos(1e-4)], dtype=torch.float64))
    assert rotation_angle_deg(tiny).item() == pytest.approx(math.degrees(2e-4), rel=1e-6)
    assert rotation_angle_deg(torch.eye(3)).item() == 0
