"""Synthetic multi-view scenes with exact ground truth, ray cast in torch.

A scene is an open-topped room (textured floor and walls, sky above) with a few textured spheres and
boxes standing on the floor, seen by pinhole cameras on an arc around the room's centre, looking at it.
The four walls have hues a quarter turn apart, in the same order around every room: as in a real room, what
a view sees behind the objects tells where it looks from (with one colour per pair of opposite walls, a
1100-step teacher learned depth but no rotation: docs/train.md).
Everything random comes from one seed, so a scene is reproducible bit for bit on a given machine.
Textures are solid (functions of the 3D hit point) and shading uses fixed directional lights, so a
surface point has the same colour in every view: the views are photo-consistent, as real multi-view
data is for a reconstruction network.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lite3r.data.images import PATCH_SIZE
from lite3r.geometry import invert_extrinsics, pixel_grid

WALL_HEIGHT = 2.6
WALLS = 4  # materials 1-4: the -x, +x, -z, +z walls; 0 is the floor, objects follow
SKY_TOP = (0.55, 0.72, 0.95)
SKY_HORIZON = (0.92, 0.95, 1.0)
LIGHTS = ((0.35, 0.85, 0.4, 0.55), (-0.6, 0.3, -0.75, 0.3))  # direction xyz (world, y up), strength
AMBIENT = 0.45
NOISE_RESOLUTION = 32
NOISE_OCTAVES = ((1.3, 0.45), (3.1, 0.3), (7.7, 0.15), (17.0, 0.1))  # frequency (per metre), weight


@dataclass(frozen=True)
class Scene:
    """One scene's views and ground truth; ``S`` views of ``H x W`` pixels.

    ``extrinsics`` are OpenCV camera-from-world, ``depth`` is z-depth (``0`` where ``valid`` is false,
    i.e. sky), ``world_points`` are the 3D points seen at each pixel (``0`` where invalid).
    """

    images: torch.Tensor  # [S, 3, H, W] float32 in [0, 1]
    depth: torch.Tensor  # [S, H, W] float32
    valid: torch.Tensor  # [S, H, W] bool
    intrinsics: torch.Tensor  # [S, 3, 3] float32
    extrinsics: torch.Tensor  # [S, 3, 4] float32
    world_points: torch.Tensor  # [S, H, W, 3] float32

    @property
    def num_views(self) -> int:
        return self.images.shape[0]


def make_scene(
    num_views: int,
    height: int = 518,
    width: int = 518,
    seed: int = 0,
    num_objects: int = 5,
    device: torch.device | str | None = None,
) -> Scene:
    """Render ``num_views`` views (``height x width``, multiples of 14) of a random scene from ``seed``.

    The layout and cameras are drawn on the CPU (numpy, so ``seed`` means the same scene everywhere); the ray
    casting runs on ``device`` (default CPU), e.g. on the GPU that trains on the scenes.
    """
    _check_views(num_views, height, width)
    if num_objects < 0:
        raise ValueError(f"num_objects must be at least 0, got {num_objects}")
    rng = np.random.default_rng(seed)
    layout = _random_layout(rng, num_objects)
    extrinsics, intrinsics = _random_cameras(rng, num_views, height, width)
    device = torch.device(device or "cpu")
    return _render(layout.to(device), extrinsics.to(device), intrinsics.to(device), height, width)


class SyntheticScenes(torch.utils.data.Dataset):
    """``num_scenes`` distinct scenes, rendered on access (on ``device``); scene ``i`` depends only on
    ``(seed, i)``, so two datasets with different seeds share no scene."""

    def __init__(
        self,
        num_scenes: int,
        num_views: int,
        height: int = 518,
        width: int = 518,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        if num_scenes < 1:
            raise ValueError(f"num_scenes must be at least 1, got {num_scenes}")
        _check_views(num_views, height, width)  # fail here, not on first access
        self.num_scenes = num_scenes
        self.num_views = num_views
        self.height = height
        self.width = width
        self.seed = seed
        self.device = device

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> Scene:
        if not -self.num_scenes <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range for {self.num_scenes} scenes")
        scene_seed = np.random.SeedSequence([self.seed, index % self.num_scenes]).generate_state(1)[0]
        return make_scene(self.num_views, self.height, self.width, seed=int(scene_seed), device=self.device)


def _check_views(num_views: int, height: int, width: int) -> None:
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    if height <= 0 or width <= 0 or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(f"height and width must be positive multiples of {PATCH_SIZE}, got {height}x{width}")


@dataclass(frozen=True)
class _Layout:
    room_half: tuple[float, float]  # half extents along x and z; floor at y = 0
    spheres: torch.Tensor  # [K, 4]: centre xyz, radius
    boxes: torch.Tensor  # [K, 2, 3]: min corner, max corner
    colors: torch.Tensor  # [1 + WALLS + K_spheres + K_boxes, 3]: floor, walls, spheres, boxes
    checker_sizes: torch.Tensor  # [materials]: cell size (m) of each material's checker pattern
    noise: torch.Tensor  # [1, 4, N, N, N]: luminance + colour noise volume

    def to(self, device: torch.device) -> _Layout:
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "room_half"}
        return dataclasses.replace(self, **{name: t.to(device) for name, t in tensors.items()})


def _random_layout(rng: np.random.Generator, num_objects: int) -> _Layout:
    """Room size, then objects on the floor within 1.3 m of the centre (cameras stay 2.2 m or more away)."""
    room_half = tuple(float(h) for h in rng.uniform(3.5, 4.5, size=2))
    num_spheres = int(rng.integers(1, num_objects)) if num_objects > 1 else num_objects
    angle = rng.uniform(0, 2 * math.pi, size=num_objects)
    distance = rng.uniform(0.2, 1.3, size=num_objects)
    half_size = rng.uniform(0.2, 0.45, size=(num_objects, 3))
    centre = np.stack([distance * np.cos(angle), half_size[:, 1], distance * np.sin(angle)], axis=-1)
    spheres = np.concatenate([centre[:, :1], half_size[:, :1], centre[:, 2:], half_size[:, :1]], axis=-1)
    boxes = np.stack([centre - half_size, centre + half_size], axis=1)
    num_materials = 3 + num_objects  # drawn for floor, x walls, z walls, objects; each wall pair then splits
    hues = rng.uniform(size=num_materials)
    saturation_value = [(rng.uniform(0.3, 0.8), rng.uniform(0.55, 0.95)) for _ in hues]
    source = np.array([0, 1, 1, 2, 2, *range(3, num_materials)])  # floor, -x, +x, -z, +z, objects
    hues = hues[source]
    hues[1 : 1 + WALLS] = (hues[1] + np.array([0.0, 0.5, 0.25, 0.75])) % 1  # -x, +x, -z, +z: around the room
    colors = np.stack([_hsv_to_rgb(h, *saturation_value[i]) for h, i in zip(hues, source)])
    checker_sizes = rng.uniform(0.15, 0.6, size=num_materials)[source]
    return _Layout(
        room_half=room_half,
        spheres=torch.tensor(spheres[:num_spheres], dtype=torch.float32),
        boxes=torch.tensor(boxes[num_spheres:], dtype=torch.float32),
        colors=torch.tensor(colors, dtype=torch.float32),
        checker_sizes=torch.tensor(checker_sizes, dtype=torch.float32),
        noise=torch.tensor(rng.uniform(0, 1, size=(1, 4) + (NOISE_RESOLUTION,) * 3), dtype=torch.float32),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _random_cameras(
    rng: np.random.Generator, num_views: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras on an arc of 60-180 degrees around the room centre, looking near it, with seeded jitter."""
    arc = math.radians(rng.uniform(60, 180))
    start = rng.uniform(0, 2 * math.pi)
    steps = np.linspace(0, 1, num_views) if num_views > 1 else np.zeros(1)
    azimuth = start + arc * steps + rng.normal(0, math.radians(4), size=num_views)
    distance = rng.uniform(2.2, 3.0, size=num_views)
    eye = np.stack([distance * np.cos(azimuth), rng.uniform(1.2, 1.9, num_views), distance * np.sin(azimuth)], -1)
    target = np.array([0.0, 0.5, 0.0]) + rng.normal(0, [0.25, 0.1, 0.25], size=(num_views, 3))
    roll = rng.normal(0, math.radians(3), size=num_views)
    fov_w = np.radians(rng.uniform(50, 70, size=num_views))

    forward = _normalize(target - eye)
    right = _normalize(np.cross(forward, [0.0, 1.0, 0.0]))
    down = np.cross(forward, right)
    cos, sin = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = cos * right + sin * down, cos * down - sin * right
    rotation = np.stack([right, down, forward], axis=1)  # rows: camera axes in world coordinates
    translation = -np.einsum("sij,sj->si", rotation, eye)
    extrinsics = np.concatenate([rotation, translation[..., None]], axis=-1)

    focal = (width / 2) / np.tan(fov_w / 2)
    intrinsics = np.zeros((num_views, 3, 3))
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = width / 2, height / 2, 1
    return torch.tensor(extrinsics, dtype=torch.float32), torch.tensor(intrinsics, dtype=torch.float32)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _render(
    layout: _Layout, extrinsics: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int
) -> Scene:
    num_views = extrinsics.shape[0]
    cam_to_world = invert_extrinsics(extrinsics)
    # Ray through pixel (u, v) with camera-frame direction ((u - cx)/fx, (v - cy)/fy, 1): the hit distance
    # along it is the z-depth.
    uv = pixel_grid(height, width, device=extrinsics.device).reshape(1, -1, 2)
    xy = (uv - intrinsics[:, None, :2, 2]) / intrinsics[:, None, (0, 1), (0, 1)]
    dirs_cam = torch.cat((xy, torch.ones_like(xy[..., :1])), dim=-1)
    dirs = dirs_cam @ cam_to_world[:, :, :3].transpose(-1, -2)  # [S, P, 3]
    origins = cam_to_world[:, None, :, 3].expand_as(dirs)

    hits = [_hit_room(origins, dirs, layout.room_half)]
    if len(layout.spheres):
        hits.append(_hit_spheres(origins, dirs, layout.spheres, first_material=1 + WALLS))
    if len(layout.boxes):
        hits.append(_hit_boxes(origins, dirs, layout.boxes, first_material=1 + WALLS + len(layout.spheres)))
    t_all, normal_all, material_all = (torch.cat(parts, dim=-1) for parts in zip(*hits))
    t, nearest = t_all.min(dim=-1)
    normal = normal_all.gather(-1, nearest[..., None, None].expand(-1, -1, 3, 1)).squeeze(-1)
    material = material_all.gather(-1, nearest[..., None]).squeeze(-1)
    valid = torch.isfinite(t)
    depth = torch.where(valid, t, torch.zeros_like(t))
    points = torch.where(valid[..., None], origins + depth[..., None] * dirs, torch.zeros_like(dirs))

    surface = _shade(points, normal, material, layout)
    sky = _sky(dirs)
    images = torch.where(valid[..., None], surface, sky).clamp(0, 1)
    return Scene(
        images=images.reshape(num_views, height, width, 3).permute(0, 3, 1, 2).contiguous(),
        depth=depth.reshape(num_views, height, width),
        valid=valid.reshape(num_views, height, width),
        intrinsics=intrinsics,
        extrinsics=extrinsics,
        world_points=points.reshape(num_views, height, width, 3),
    )


# Each _hit_* returns, per ray and per surface k: hit distance t [S, P, K] (inf on a miss), outward normal
# [S, P, 3, K] and material index [S, P, K].


def _hit_room(origins: torch.Tensor, dirs: torch.Tensor, room_half: tuple[float, float]):
    """From inside the room, the ray leaves through the floor, a wall, or the open top (a miss)."""
    rx, rz = room_half
    lo = torch.tensor([-rx, 0.0, -rz], device=dirs.device)
    hi = torch.tensor([rx, WALL_HEIGHT, rz], device=dirs.device)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    exit_t = torch.maximum((lo - origins) / safe, (hi - origins) / safe)  # [S, P, 3] per axis
    t, axis = exit_t.min(dim=-1)
    through_top = (axis == 1) & (dirs[..., 1] > 0)
    t = torch.where(through_top, torch.full_like(t, math.inf), t)
    normal = -F.one_hot(axis, 3).to(dirs.dtype) * torch.sign(dirs)  # facing into the room
    wall = torch.tensor([1, 0, 3], device=dirs.device)[axis] + (dirs.gather(-1, axis[..., None])[..., 0] > 0).long()
    material = torch.where(axis == 1, torch.zeros_like(wall), wall)  # floor 0; walls -x 1, +x 2, -z 3, +z 4
    return t[..., None], normal[..., None], material[..., None]


def _hit_spheres(origins: torch.Tensor, dirs: torch.Tensor, spheres: torch.Tensor, first_material: int):
    centre, radius = spheres[:, :3], spheres[:, 3]
    offset = origins[..., None, :] - centre  # [S, P, K, 3]
    a = (dirs * dirs).sum(-1, keepdim=True)
    half_b = (offset * dirs[..., None, :]).sum(-1)
    c = (offset * offset).sum(-1) - radius**2
    disc = half_b**2 - a * c
    t = (-half_b - disc.clamp_min(0).sqrt()) / a
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))
    hit = origins[..., None, :] + t.clamp_max(1e6)[..., None] * dirs[..., None, :]
    normal = (hit - centre) / radius[:, None]
    material = torch.arange(len(spheres), device=t.device).expand_as(t) + first_material
    return t, normal.transpose(-1, -2), material


def _hit_boxes(origins: torch.Tensor, dirs: torch.Tensor, boxes: torch.Tensor, first_material: int):
    """Slab test against axis-aligned boxes seen from outside."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)[..., None, :]
    t_lo = (boxes[:, 0] - origins[..., None, :]) / safe  # [S, P, K, 3]
    t_hi = (boxes[:, 1] - origins[..., None, :]) / safe
    enter, axis = torch.minimum(t_lo, t_hi).max(dim=-1)
    leave = torch.maximum(t_lo, t_hi).min(dim=-1).values
    t = torch.where((enter <= leave) & (enter > 0), enter, torch.full_like(enter, math.inf))
    normal = -F.one_hot(axis, 3).to(dirs.dtype) * torch.sign(dirs)[..., None, :]
    material = torch.arange(len(boxes), device=t.device).expand_as(t) + first_material
    return t, normal.transpose(-1, -2), material


def _shade(points: torch.Tensor, normal: torch.Tensor, material: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Solid noise (several octaves) times a per-material checker and colour, lit by two fixed lights."""
    flat = points.reshape(1, 1, 1, -1, 3)
    noise = torch.zeros(4, flat.shape[3], device=points.device)
    for i, (frequency, weight) in enumerate(NOISE_OCTAVES):
        # Octaves sample the volume at different scales and offsets; reflection tiles it seamlessly.
        grid = flat * (frequency * 2 / NOISE_RESOLUTION) + 0.37 * i
        noise += weight * F.grid_sample(
            layout.noise, grid, mode="bilinear", padding_mode="reflection", align_corners=True
        ).reshape(4, -1)
    noise = noise.T.reshape(*points.shape[:-1], 4)
    luminance, tint = noise[..., :1], noise[..., 1:]

    # Step just inside the surface: on the floor y is ~0 and its sign would flip the checker at random.
    inside = points - 1e-3 * normal
    cells = torch.floor(inside / layout.checker_sizes[material][..., None]).sum(-1)
    checker = 1 - 0.35 * torch.remainder(cells, 2)[..., None]
    albedo = layout.colors[material] * (0.25 + 1.1 * luminance) * checker + 0.35 * (tint - 0.5)

    light = torch.full_like(luminance, AMBIENT)
    for *direction, strength in LIGHTS:
        towards = F.normalize(torch.tensor(direction, device=points.device), dim=0)
        light = light + strength * (normal @ towards).clamp_min(0)[..., None]
    return albedo * light


def _sky(dirs: torch.Tensor) -> torch.Tensor:
    up = (dirs[..., 1:2] / dirs.norm(dim=-1, keepdim=True)).clamp(0, 1)
    top, horizon = torch.tensor(SKY_TOP, device=dirs.device), torch.tensor(SKY_HORIZON, device=dirs.device)
    return horizon + up * (top - horizon)
