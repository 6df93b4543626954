from __future__ import annotations

import dataclasses

import pytest
import torch

from lite3r.data import Scene, SyntheticScenes, make_scene
from lite3r.geometry import depth_to_world_points, project

HEIGHT, WIDTH = 112, 140


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(3, HEIGHT, WIDTH, seed=1)


def _reprojection_errors(scene: Scene, i: int, j: int, max_offset_px: float = 0.1) -> torch.Tensor:
    """``(depth_j - z) / z`` for view i's points that land within ``max_offset_px`` of a valid pixel of view j.

    Only landings near a pixel centre are kept, so the nearest pixel's depth is that of the same surface
    point unless the point is occluded (negative) or on a silhouette; a positive error means view j sees
    *through* the surface.
    """
    points = scene.world_points[i][scene.valid[i]]
    uv, z = project(points, scene.extrinsics[j], scene.intrinsics[j])
    pixel = uv.round()
    u, v = pixel.long().unbind(-1)
    keep = (z > 0) & ((uv - pixel).norm(dim=-1) < max_offset_px)
    keep &= (u >= 0) & (u < WIDTH) & (v >= 0) & (v < HEIGHT)
    u, v, z = u[keep], v[keep], z[keep]
    seen = scene.valid[j][v, u]
    return ((scene.depth[j][v, u] - z) / z)[seen]


def test_fields_shapes_and_conventions(scene):
    assert scene.num_views == 3
    assert scene.images.shape == (3, 3, HEIGHT, WIDTH) and scene.images.dtype == torch.float32
    assert scene.depth.shape == scene.valid.shape == (3, HEIGHT, WIDTH) and scene.valid.dtype == torch.bool
    assert scene.world_points.shape == (3, HEIGHT, WIDTH, 3)
    assert scene.intrinsics.shape == (3, 3, 3) and scene.extrinsics.shape == (3, 3, 4)
    assert 0 <= scene.images.min() and scene.images.max() <= 1
    assert torch.all(scene.depth[scene.valid] > 0) and torch.all(scene.depth[~scene.valid] == 0)
    assert scene.valid.float().mean() > 0.5
    torch.testing.assert_close(scene.intrinsics[:, :2, 2], torch.tensor([WIDTH / 2, HEIGHT / 2]).expand(3, 2))
    rotation = scene.extrinsics[..., :3]
    torch.testing.assert_close(rotation @ rotation.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)


def test_world_points_are_the_unprojected_depth(scene):
    unprojected = depth_to_world_points(scene.depth, scene.extrinsics, scene.intrinsics)
    torch.testing.assert_close(unprojected[scene.valid], scene.world_points[scene.valid], atol=1e-4, rtol=0)


def test_cameras_look_at_the_centre(scene):
    uv, z = project(torch.tensor([0.0, 0.5, 0.0]).expand(3, 3), scene.extrinsics, scene.intrinsics)
    assert torch.all(z > 1)
    assert torch.all((uv - torch.tensor([WIDTH / 2, HEIGHT / 2])).abs() < torch.tensor([WIDTH / 2, HEIGHT / 2]))


def test_depth_reprojects_exactly_without_occluders():
    # An empty room is convex seen from inside: every point of one view is visible in the others.
    empty = make_scene(3, HEIGHT, WIDTH, seed=2, num_objects=0)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        errors = _reprojection_errors(empty, i, j)
        assert len(errors) > 100
        assert errors.abs().quantile(0.99) < 5e-3


def test_depth_reprojects_where_visible(scene):
    for i, j in ((0, 1), (1, 2), (2, 0)):
        errors = _reprojection_errors(scene, i, j)
        assert (errors.abs() < 5e-3).float().mean() > 0.3  # many points are seen by both views
        assert (errors > 0.05).float().mean() < 0.02  # view j never sees through a surface (but at silhouettes)


def test_images_have_texture(scene):
    assert torch.all(scene.images.std(dim=(1, 2, 3)) > 0.05)
    horizontal_gradient = (scene.images[..., 1:] - scene.images[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert torch.all(horizontal_gradient > 0.01)
    assert not torch.equal(scene.images[0], scene.images[1])


def test_same_seed_same_scene_other_seed_other_scene(scene):
    again = make_scene(3, HEIGHT, WIDTH, seed=1)
    for field in dataclasses.fields(Scene):
        assert torch.equal(getattr(scene, field.name), getattr(again, field.name)), field.name
    other = make_scene(3, HEIGHT, WIDTH, seed=2)
    assert not torch.equal(scene.images, other.images)
    assert not torch.equal(scene.extrinsics, other.extrinsics)


@pytest.mark.parametrize(("args", "match"), [((3, 100, 140), "multiples of 14"), ((3, 0, 14), "multiples of 14"),
                                             ((0, 14, 14), "num_views")])  # fmt: skip
def test_bad_sizes_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        make_scene(*args)
    with pytest.raises(ValueError, match=match):
        SyntheticScenes(2, *args)


def test_dataset_is_indexable_and_reproducible():
    scenes = SyntheticScenes(num_scenes=2, num_views=2, height=28, width=42, seed=7)
    assert len(scenes) == 2
    first, second = scenes[0], scenes[1]
    assert first.images.shape == (2, 3, 28, 42)
    assert torch.equal(first.images, scenes[0].images) and torch.equal(first.images, scenes[-2].images)
    assert not torch.equal(first.images, second.images)
    assert not torch.equal(first.images, SyntheticScenes(2, 2, 28, 42, seed=8)[0].images)
    assert len(list(scenes)) == 2
    with pytest.raises(IndexError):
        scenes[2]
