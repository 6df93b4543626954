from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lite3r.data import SyntheticScenes, make_scene
from lite3r.data.datasets import (
    DatasetError,
    ImageFolderScenes,
    MVSScenes,
    blendedmvs_scenes,
    dtu_scenes,
    item_images,
    open_scenes,
    read_cam_file,
    read_pfm,
    write_pfm,
)


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, height=56, width=84, seed=7)


def _write_cam(path, extrinsics, intrinsics):
    rows = [*(" ".join(repr(float(v)) for v in row) for row in extrinsics.tolist()), "0.0 0.0 0.0 1.0"]
    k = [" ".join(repr(float(v)) for v in row) for row in intrinsics.tolist()]
    path.write_text("extrinsic\n" + "\n".join(rows) + "\n\nintrinsic\n" + "\n".join(k) + "\n\n425.0 2.5\n")


def _write_png(path, image):
    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")  # lossless, whatever the file's extension


def _write_pairs(path, pairs):
    lines = [str(len(pairs))]
    for ref, sources in pairs.items():
        lines += [str(ref), " ".join([str(len(sources)), *(f"{s} {100.0 - i}" for i, s in enumerate(sources))])]
    path.write_text("\n".join(lines) + "\n")


PAIRS = {0: [2, 1], 1: [0, 2], 2: [1, 0]}


def _write_blendedmvs(scene, root):
    scan = root / "5a3ca9cb270f0e3f14d0eddb"
    for sub in ("blended_images", "cams", "rendered_depth_maps"):
        (scan / sub).mkdir(parents=True)
    for v in range(scene.num_views):
        _write_png(scan / "blended_images" / f"{v:08d}.jpg", scene.images[v])
        Image.new("RGB", (8, 8)).save(scan / "blended_images" / f"{v:08d}_masked.jpg")  # must be ignored
        _write_cam(scan / "cams" / f"{v:08d}_cam.txt", scene.extrinsics[v], scene.intrinsics[v])
        write_pfm(scan / "rendered_depth_maps" / f"{v:08d}.pfm", scene.depth[v].numpy())
    _write_pairs(scan / "cams" / "pair.txt", {v: PAIRS[v] for v in range(scene.num_views)})
    return root


@pytest.fixture(scope="module")
def blendedmvs_root(scene, tmp_path_factory):
    return _write_blendedmvs(scene, tmp_path_factory.mktemp("blendedmvs"))


@pytest.fixture(scope="module")
def dtu_root(scene, tmp_path_factory):
    """DTU training layout: cameras and depth maps at a quarter of the image resolution."""
    root = tmp_path_factory.mktemp("dtu")
    for sub in ("Rectified/scan4_train", "Cameras/train", "Depths/scan4_train"):
        (root / sub).mkdir(parents=True)
    for v in range(scene.num_views):
        _write_png(root / "Rectified" / "scan4_train" / f"rect_{v + 1:03d}_3_r5000.png", scene.images[v])
        _write_png(root / "Rectified" / "scan4_train" / f"rect_{v + 1:03d}_0_r5000.png", 1 - scene.images[v])
        quarter = scene.intrinsics[v].clone()
        quarter[:2] /= 4
        _write_cam(root / "Cameras" / "train" / f"{v:08d}_cam.txt", scene.extrinsics[v], quarter)
        write_pfm(root / "Depths" / "scan4_train" / f"depth_map_{v:04d}.pfm", scene.depth[v, ::4, ::4].numpy())
    _write_pairs(root / "Cameras" / "pair.txt", PAIRS)
    return root


def test_pfm_round_trip_keeps_the_top_row_first(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_pfm(tmp_path / "d.pfm", depth)
    np.testing.assert_array_equal(read_pfm(tmp_path / "d.pfm"), depth)
    assert (tmp_path / "d.pfm").read_bytes().startswith(b"Pf\n4 3\n-1\n")


def test_blendedmvs_at_full_size_reproduces_the_scene(blendedmvs_root, scene):
    data = blendedmvs_scenes(blendedmvs_root, num_views=3, size=84)
    assert len(data) == 3  # one item per reference view; the _masked images are not views
    item = data[1]
    order = [1, *PAIRS[1]]
    torch.testing.assert_close(item.images, scene.images[order], rtol=0, atol=0.5 / 255 + 1e-6)
    torch.testing.assert_close(item.depth, scene.depth[order], rtol=0, atol=0)
    torch.testing.assert_close(item.intrinsics, scene.intrinsics[order], rtol=0, atol=0)
    torch.testing.assert_close(item.extrinsics, scene.extrinsics[order], rtol=0, atol=0)
    assert torch.equal(item.valid, scene.valid[order])
    torch.testing.assert_close(item.world_points, scene.world_points[order], rtol=1e-4, atol=1e-4)


def test_resizing_and_cropping_moves_intrinsics_and_depth_with_the_pixels(tmp_path):
    portrait = make_scene(1, height=84, width=56, seed=8)
    item = blendedmvs_scenes(_write_blendedmvs(portrait, tmp_path), num_views=1, size=28)[0]
    # 56 wide x 84 high -> width 28, height 42 (a multiple of 14), centre-cropped to 28 rows from row 7
    assert item.images.shape == (1, 3, 28, 28) and item.depth.shape == (1, 28, 28)
    expected = portrait.intrinsics[0].clone()
    expected[:2] *= 0.5
    expected[1, 2] -= 7
    torch.testing.assert_close(item.intrinsics[0], expected)
    torch.testing.assert_close(item.depth[0], portrait.depth[0, 14:70:2, ::2])  # nearest: every other pixel


def test_dtu_rescales_quarter_resolution_cameras_and_picks_the_light(dtu_root, scene):
    data = dtu_scenes(dtu_root, num_views=2, size=84)
    item = data[0]
    order = [0, PAIRS[0][0]]
    torch.testing.assert_close(item.intrinsics, scene.intrinsics[order], rtol=0, atol=0)
    torch.testing.assert_close(item.images, scene.images[order], rtol=0, atol=0.5 / 255 + 1e-6)  # light 3, not 0
    upsampled = scene.depth[order][:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(item.depth, upsampled, rtol=0, atol=0)
    other_light = dtu_scenes(dtu_root, num_views=2, size=84, light=0)[0]
    torch.testing.assert_close(other_light.images, 1 - scene.images[order], rtol=0, atol=0.5 / 255 + 1e-6)


def test_views_without_a_pair_file_follow_by_index(blendedmvs_root, tmp_path, scene):
    import shutil

    scan = tmp_path / "scan"
    shutil.copytree(next(blendedmvs_root.iterdir()), scan)
    (scan / "cams" / "pair.txt").unlink()
    item = blendedmvs_scenes(scan, num_views=2, size=84)[2]
    torch.testing.assert_close(item.extrinsics, scene.extrinsics[[2, 0]])


def test_open_scenes_recognises_each_layout(dtu_root, blendedmvs_root, tmp_path, scene):
    assert isinstance(open_scenes("synthetic", 2, size=28, num_scenes=3), SyntheticScenes)
    assert isinstance(open_scenes(dtu_root, 2, size=28), MVSScenes)
    assert isinstance(open_scenes(blendedmvs_root, 2, size=28), MVSScenes)
    for v in range(3):
        _write_png(tmp_path / f"{v}.png", scene.images[v])
    folder = open_scenes(tmp_path, 2, size=28)
    assert isinstance(folder, ImageFolderScenes) and len(folder) == 2
    assert folder[1].shape == (2, 3, 14, 28)


def test_item_images_accepts_scenes_tensors_and_dicts(scene):
    assert item_images(scene).shape == (1, 3, 3, 56, 84)
    assert item_images(scene.images[:2]).shape == (1, 2, 3, 56, 84)
    assert item_images({"images": scene.images[None]}).shape == (1, 3, 3, 56, 84)
    with pytest.raises(DatasetError, match="must be a Scene or images"):
        item_images(torch.zeros(3, 4))


def test_bad_folders_fail_with_one_clear_error(dtu_root, blendedmvs_root, tmp_path):
    with pytest.raises(DatasetError, match="data folder not found"):
        dtu_scenes(tmp_path / "nope", 2)
    with pytest.raises(DatasetError, match="fewer than num_views=4"):
        dtu_scenes(dtu_root, 4)
    with pytest.raises(DatasetError, match=r"scans \['scan9'\] not in"):
        dtu_scenes(dtu_root, 2, scans=["scan9"])
    (tmp_path / "cam.txt").write_text("intrinsic\n1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(DatasetError, match="not an MVSNet camera file"):
        read_cam_file(tmp_path / "cam.txt")
    (tmp_path / "d.pfm").write_bytes(b"PF\n1 1\n-1\n" + bytes(12))
    with pytest.raises(DatasetError, match="not a single-channel PFM"):
        read_pfm(tmp_path / "d.pfm")
    with pytest.raises(DatasetError, match="size must be a positive multiple of 14"):
        blendedmvs_scenes(blendedmvs_root, 2, size=30)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7])
def test_image_folders_of_any_size_give_only_full_scenes(tmp_path, scene, count):
    """Iterating a folder (as calibration's ``islice`` does) used to run past the last window into scenes of one
    and zero views, and the model crashed on the empty one (3 images, 2 views, 4 batches)."""
    from itertools import islice

    for v in range(count):
        _write_png(tmp_path / f"{v}.png", scene.images[v % 3])
    if count < 2:
        with pytest.raises(DatasetError, match=f"has {count} image\\(s\\); scenes of 2 views need at least 2"):
            open_scenes(tmp_path, 2, size=28)
        return
    folder = open_scenes(tmp_path, 2, size=28)
    scenes = list(islice(folder, 4))
    assert len(scenes) == min(4, count - 1) == len(list(islice(iter(folder), 10))[:4])
    assert all(s.shape == (2, 3, 14, 28) for s in scenes)
    assert len(list(folder)) == count - 1
    with pytest.raises(IndexError):
        folder[count - 1]
