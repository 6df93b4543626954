"""Multi-view training and calibration data: DTU and BlendedMVS folders, image folders, synthetic scenes.

Every source is a ``torch.utils.data.Dataset`` whose items are :class:`~lite3r.data.synthetic.Scene`
(views with ground-truth depth and cameras) or, for plain image folders, image tensors ``[S, 3, H, W]``.
Views are preprocessed like the official VGGT "crop" mode: width ``size``, height from the aspect ratio
rounded to a multiple of 14 and centre-cropped to at most ``size``; intrinsics and depth follow.

Folder layouts (those of the MVSNet preprocessed releases):

- DTU (``dtu_training``): ``Rectified/scan<N>_train/rect_<view+1:03d>_<light>_r5000.png``,
  ``Cameras/train/<view:08d>_cam.txt`` (intrinsics of the 4x downsampled 160x128 depth maps),
  ``Cameras/pair.txt``, ``Depths/scan<N>_train/depth_map_<view:04d>.pfm``.
- BlendedMVS: ``<scan>/blended_images/<view:08d>.jpg``, ``<scan>/cams/<view:08d>_cam.txt``,
  ``<scan>/cams/pair.txt``, ``<scan>/rendered_depth_maps/<view:08d>.pfm``.

A scene is a reference view and its best neighbours from ``pair.txt`` (the next views by index when there
is none). ``cam.txt`` extrinsics are camera-from-world (OpenCV), as in VGGT; depth ``0`` means invalid.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lite3r.data.images import PATCH_SIZE, _centre_crop_rows, _round_to_patch, _to_tensor, load_images
from lite3r.data.synthetic import Scene, SyntheticScenes
from lite3r.geometry import depth_to_world_points

DTU_CAMERA_DOWNSCALE = 4
"""``Cameras/train`` intrinsics describe images 4x smaller than the 640x512 ``Rectified`` views."""
DTU_DEFAULT_LIGHT = 3


class DatasetError(ValueError):
    """A data folder that does not have the expected layout, or an unreadable file in it."""


def item_images(item: Any) -> torch.Tensor:
    """The images ``[B, S, 3, H, W]`` of a data item: a Scene, a dict with ``images``, or an image tensor."""
    images = item.images if isinstance(item, Scene) else item.get("images") if isinstance(item, dict) else item
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
        raise DatasetError(
            f"a data item must be a Scene or images [S, 3, H, W] / [B, S, 3, H, W]; got {_describe(item)}"
        )
    return images if images.ndim == 5 else images.unsqueeze(0)


@dataclass(frozen=True)
class View:
    """Files of one view of an MVS scan."""

    image: Path
    camera: Path
    depth: Path


class MVSScenes(torch.utils.data.Dataset):
    """Scenes of ``num_views`` views from MVSNet-layout scans; one item per (scan, reference view)."""

    def __init__(
        self,
        scans: dict[str, list[View]],
        pairs: dict[str, dict[int, list[int]]],
        num_views: int,
        size: int = 518,
        camera_downscale: float = 1.0,
    ) -> None:
        if num_views < 1:
            raise DatasetError(f"num_views must be at least 1, got {num_views}")
        if size <= 0 or size % PATCH_SIZE:
            raise DatasetError(f"size must be a positive multiple of {PATCH_SIZE}, got {size}")
        for name, views in scans.items():
            if len(views) < num_views:
                raise DatasetError(f"scan {name} has {len(views)} views, fewer than num_views={num_views}")
        self.scans, self.pairs, self.num_views, self.size = scans, pairs, num_views, size
        self.camera_downscale = camera_downscale
        self.index = [(name, ref) for name, views in scans.items() for ref in range(len(views))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Scene:
        name, ref = self.index[i]
        views = self.scans[name]
        ids = _view_set(ref, self.pairs.get(name, {}).get(ref, []), len(views), self.num_views)
        loaded = [self._load(views[v]) for v in ids]
        images, depth, intrinsics, extrinsics = (torch.stack(t) for t in zip(*loaded))
        valid = depth > 0
        world_points = depth_to_world_points(depth, extrinsics, intrinsics) * valid[..., None]
        return Scene(images, depth, valid, intrinsics, extrinsics, world_points)

    def _load(self, view: View) -> tuple[torch.Tensor, ...]:
        extrinsics, intrinsics = read_cam_file(view.camera)
        intrinsics[:2] *= self.camera_downscale
        image = _open_rgb(view.image)
        depth = torch.from_numpy(read_pfm(view.depth).copy())
        return (*_crop_view(image, depth, intrinsics, self.size), extrinsics)


def dtu_scenes(
    root: str | os.PathLike, num_views: int, *, size: int = 518, light: int = DTU_DEFAULT_LIGHT, scans=None
) -> MVSScenes:
    """DTU in the MVSNet ``dtu_training`` layout (see module docstring); ``scans`` e.g. ``["scan1"]``."""
    root = _folder(root)
    rectified = _folder(root / "Rectified")
    names = sorted(p.name.removesuffix("_train") for p in rectified.glob("scan*_train") if p.is_dir())
    names = _choose(names, scans, root)
    found: dict[str, list[View]] = {}
    for name in names:
        pattern = re.compile(rf"rect_(\d{{3}})_{light}_r5000\.png")
        ids = sorted(int(m[1]) - 1 for p in (rectified / f"{name}_train").iterdir() if (m := pattern.fullmatch(p.name)))
        found[name] = [
            View(
                rectified / f"{name}_train" / f"rect_{v + 1:03d}_{light}_r5000.png",
                root / "Cameras" / "train" / f"{v:08d}_cam.txt",
                root / "Depths" / f"{name}_train" / f"depth_map_{v:04d}.pfm",
            )
            for v in ids
        ]
    pair_file = root / "Cameras" / "pair.txt"
    pairs = read_pair_file(pair_file) if pair_file.is_file() else {}
    return MVSScenes(
        found, {name: _reindex(pairs, views, _dtu_id) for name, views in found.items()}, num_views, size,
        camera_downscale=DTU_CAMERA_DOWNSCALE,
    )  # fmt: skip


def blendedmvs_scenes(root: str | os.PathLike, num_views: int, *, size: int = 518, scans=None) -> MVSScenes:
    """BlendedMVS scans under ``root`` (or ``root`` itself a scan folder); see the module docstring."""
    root = _folder(root)
    if (root / "blended_images").is_dir():
        scan_dirs = [root]
    else:
        scan_dirs = sorted(p.parent for p in root.glob("*/blended_images"))
    by_name = {p.name: p for p in scan_dirs}
    found: dict[str, list[View]] = {}
    pairs: dict[str, dict[int, list[int]]] = {}
    for name in _choose(sorted(by_name), scans, root):
        scan = by_name[name]
        images = sorted(p for p in (scan / "blended_images").glob("*.jpg") if re.fullmatch(r"\d{8}\.jpg", p.name))
        found[name] = [
            View(p, scan / "cams" / f"{p.stem}_cam.txt", scan / "rendered_depth_maps" / f"{p.stem}.pfm") for p in images
        ]
        pair_file = scan / "cams" / "pair.txt"
        pairs[name] = _reindex(read_pair_file(pair_file), found[name], _stem_id) if pair_file.is_file() else {}
    return MVSScenes(found, pairs, num_views, size)


class ImageFolderScenes(torch.utils.data.Dataset):
    """Windows of ``num_views`` consecutive images (sorted by name) of one folder; no ground truth.

    Every scene has exactly ``num_views`` views: a folder of ``n`` images gives ``n - num_views + 1`` scenes, and
    indexing past the last one raises ``IndexError`` (which also ends plain iteration, as ``islice`` does).
    """

    def __init__(self, folder: str | os.PathLike, num_views: int, *, size: int = 518) -> None:
        self.images = load_images(folder, mode="crop", target_size=size)
        if not 1 <= num_views <= len(self.images):
            raise DatasetError(
                f"{folder} has {len(self.images)} image(s); scenes of {num_views} views need at least {num_views} "
                "(use fewer views or add images)"
            )
        self.num_views = num_views

    def __len__(self) -> int:
        return len(self.images) - self.num_views + 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"scene {i} out of range for {len(self)} scenes")
        i %= len(self)
        return self.images[i : i + self.num_views]


def open_scenes(
    source: str | os.PathLike, num_views: int, *, size: int = 518, num_scenes: int = 8, seed: int = 0
) -> torch.utils.data.Dataset:
    """A data source by name: ``"synthetic"`` (``num_scenes`` seeded scenes of ``size x size``), or a folder
    in the DTU, BlendedMVS or plain-image layout (recognised from its contents)."""
    if str(source) == "synthetic":
        return SyntheticScenes(num_scenes, num_views, size, size, seed)
    root = _folder(source)
    if (root / "Rectified").is_dir() and (root / "Cameras").is_dir():
        return dtu_scenes(root, num_views, size=size)
    if (root / "blended_images").is_dir() or any(root.glob("*/blended_images")):
        return blendedmvs_scenes(root, num_views, size=size)
    return ImageFolderScenes(root, num_views, size=size)


def read_cam_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """An MVSNet ``cam.txt``: ``extrinsic`` 4x4 (camera-from-world) and ``intrinsic`` 3x3 blocks.

    Returns extrinsics ``[3, 4]`` and intrinsics ``[3, 3]`` (float32). Depth-range lines are ignored.
    """
    tokens = _read_text(path).split()
    try:
        extrinsic = np.array(tokens[tokens.index("extrinsic") + 1 :][:16], dtype=np.float64).reshape(4, 4)
        intrinsic = np.array(tokens[tokens.index("intrinsic") + 1 :][:9], dtype=np.float64).reshape(3, 3)
    except ValueError:
        raise DatasetError(f"{path} is not an MVSNet camera file (extrinsic 4x4 and intrinsic 3x3 blocks)") from None
    return torch.from_numpy(extrinsic[:3]).float(), torch.from_numpy(intrinsic).float()


def read_pair_file(path: str | os.PathLike) -> dict[int, list[int]]:
    """An MVSNet ``pair.txt``: for each reference view, its source views, best first."""
    try:
        numbers = [float(t) for t in _read_text(path).split()]
        count, pos, pairs = int(numbers[0]), 1, {}
        for _ in range(count):
            ref, num_src = int(numbers[pos]), int(numbers[pos + 1])
            pairs[ref] = [int(v) for v in numbers[pos + 2 : pos + 2 + 2 * num_src : 2]]
            if len(pairs[ref]) != num_src:
                raise IndexError
            pos += 2 + 2 * num_src
    except (ValueError, IndexError):
        raise DatasetError(f"{path} is not an MVSNet pair file") from None
    return pairs


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """A single-channel PFM image as ``[H, W]`` float32, top row first."""
    try:
        with open(path, "rb") as f:
            header = f.readline().strip()
            dims = f.readline().split()
            scale = float(f.readline())
            width, height = int(dims[0]), int(dims[1])
            data = np.frombuffer(f.read(4 * width * height), dtype="<f4" if scale < 0 else ">f4")
    except FileNotFoundError:
        raise DatasetError(f"depth map not found: {path}") from None
    except (ValueError, IndexError):
        raise DatasetError(f"{path} is not a PFM file") from None
    if header != b"Pf" or data.size != width * height:
        raise DatasetError(f"{path} is not a single-channel PFM file of {width}x{height}")
    return np.flipud(data.reshape(height, width)).astype(np.float32)


def write_pfm(path: str | os.PathLike, depth: np.ndarray) -> None:
    """Write ``[H, W]`` floats as a little-endian single-channel PFM (bottom row first, as the format says)."""
    depth = np.asarray(depth, dtype="<f4")
    with open(path, "wb") as f:
        f.write(f"Pf\n{depth.shape[1]} {depth.shape[0]}\n-1\n".encode())
        f.write(np.flipud(depth).tobytes())


def _crop_view(
    image: Image.Image, depth: torch.Tensor, intrinsics: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resize to width ``size`` (height rounded to a multiple of 14), centre-crop the height to ``size``."""
    width, height = image.size
    new_h = max(PATCH_SIZE, _round_to_patch(height * size / width))
    view = _to_tensor(image.resize((size, new_h), Image.Resampling.BICUBIC))
    depth = F.interpolate(depth[None, None], size=(new_h, size), mode="nearest")[0, 0]
    rows = _centre_crop_rows(new_h, size)
    intrinsics = intrinsics.clone()
    intrinsics[0] *= size / width
    intrinsics[1] *= new_h / height
    intrinsics[1, 2] -= rows.start
    return view[:, rows], depth[rows], intrinsics


def _view_set(ref: int, neighbours: list[int], num_available: int, num_views: int) -> list[int]:
    """The reference view, then its neighbours, then the following views by index, without repeats."""
    ids = [ref]
    for v in [*neighbours, *((ref + k) % num_available for k in range(1, num_available))]:
        if len(ids) == num_views:
            break
        if v not in ids and 0 <= v < num_available:
            ids.append(v)
    return ids


def _reindex(pairs: dict[int, list[int]], views: list[View], view_id) -> dict[int, list[int]]:
    """Translate a pair file's view ids into positions in ``views`` (dropping views that are absent)."""
    position = {view_id(v): i for i, v in enumerate(views)}
    return {
        position[ref]: [position[s] for s in sources if s in position]
        for ref, sources in pairs.items()
        if ref in position
    }


def _dtu_id(view: View) -> int:
    return int(view.image.name.split("_")[1]) - 1


def _stem_id(view: View) -> int:
    return int(view.image.stem)


def _choose(names: list[str], wanted, root: Path) -> list[str]:
    if not names:
        raise DatasetError(f"no scans found in {root}")
    if wanted is None:
        return names
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise DatasetError(f"scans {missing} not in {root} (have {names})")
    return [n for n in names if n in set(wanted)]


def _folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"data folder not found: {path}")
    return path


def _read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def _describe(item: Any) -> str:
    return f"tensor of shape {tuple(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
