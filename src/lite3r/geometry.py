"""Camera geometry in the VGGT conventions, batched over any leading dimensions.

Conventions (those of the official VGGT code and of its checkpoints' outputs):

- ``extrinsics [..., 3, 4]`` are OpenCV camera-from-world ``[R | t]`` (x right, y down, z forward).
- ``intrinsics [..., 3, 3]`` are in pixels; pixel ``(u, v)`` is the integer column/row index, so the
  principal point of a centred camera is ``(W/2, H/2)``.
- Quaternions are scalar-last ``(x, y, z, w)`` and standardised to ``w >= 0``.
- The pose encoding ``absT_quaR_FoV`` is ``[t (3), quaternion of R (4), fov_h, fov_w]`` (radians).
"""

from __future__ import annotations

import torch

POSE_ENCODING_SIZE = 9


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` xyzw quaternions (any non-zero norm) to ``[..., 3, 3]`` rotation matrices.

    The norm enters as ``2 / |q|^2`` instead of normalising ``q`` first, the form the official VGGT and DA3
    decoders use (so that decoded cameras match theirs to the last bit).
    """
    x, y, z, w = quaternions.unbind(-1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    rows = (
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quaternions.shape[:-1], 3, 3)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotation matrices to ``[..., 4]`` unit xyzw quaternions with ``w >= 0``.

    Each of the four components can be recovered from the diagonal; the largest one is taken as the
    pivot (its square root is well conditioned) and the others follow from the off-diagonal terms.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape [..., 3, 3], got {list(matrix.shape)}")
    m = matrix.reshape(*matrix.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    four_sq = torch.stack(  # 4 x^2, 4 y^2, 4 z^2, 4 w^2
        (1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + m00 + m11 + m22), dim=-1
    )
    # Row k: the quaternion scaled by 4 * (its k-th component), expressed without square roots.
    scaled = torch.stack(
        (
            torch.stack((four_sq[..., 0], m01 + m10, m02 + m20, m21 - m12), dim=-1),
            torch.stack((m01 + m10, four_sq[..., 1], m12 + m21, m02 - m20), dim=-1),
            torch.stack((m02 + m20, m12 + m21, four_sq[..., 2], m10 - m01), dim=-1),
            torch.stack((m21 - m12, m02 - m20, m10 - m01, four_sq[..., 3]), dim=-1),
        ),
        dim=-2,
    )
    pivot = four_sq.argmax(dim=-1, keepdim=True)
    q = scaled.gather(-2, pivot[..., None].expand(*pivot.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def invert_extrinsics(extrinsics: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of ``[..., 3, 4]`` rigid transforms: ``[R | t] -> [Rᵀ | -Rᵀ t]``."""
    rot_t = extrinsics[..., :3].transpose(-1, -2)
    return torch.cat((rot_t, -rot_t @ extrinsics[..., 3:]), dim=-1)


def compose_extrinsics(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The ``[..., 3, 4]`` transform that applies ``second`` and then ``first``."""
    rot = first[..., :3] @ second[..., :3]
    return torch.cat((rot, first[..., :3] @ second[..., 3:] + first[..., 3:]), dim=-1)


def camera_centers(extrinsics: torch.Tensor) -> torch.Tensor:
    """World positions ``[..., 3]`` of the cameras of camera-from-world ``[..., 3, 4]`` extrinsics."""
    return invert_extrinsics(extrinsics)[..., 3]


def relative_to_first(extrinsics: torch.Tensor) -> torch.Tensor:
    """Re-express ``[..., S, 3, 4]`` extrinsics in the frame of view 0 (which becomes the identity).

    This is the world frame VGGT predicts in, so ground truth compared with a prediction goes through it.
    """
    return compose_extrinsics(extrinsics, invert_extrinsics(extrinsics[..., :1, :, :]))


def transform_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Apply ``[..., 3, 4]`` transforms to points ``[..., *P, 3]`` whose leading dims match the transforms'."""
    lead = transform.shape[:-2]
    flat = points.reshape(*lead, -1, 3)
    moved = flat @ transform[..., :3].transpose(-1, -2) + transform[..., None, :, 3]
    return moved.reshape(points.shape)


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[H, W, 2]`` pixel coordinates ``(u, v)`` at integer positions (VGGT's convention)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((u, v), dim=-1)


def depth_to_camera_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject z-depth ``[..., H, W]`` to camera-frame points ``[..., H, W, 3]``."""
    uv = pixel_grid(*depth.shape[-2:], device=depth.device, dtype=depth.dtype)
    focal = intrinsics[..., None, None, (0, 1), (0, 1)]
    center = intrinsics[..., None, None, (0, 1), (2, 2)]
    xy = (uv - center) / focal * depth[..., None]
    return torch.cat((xy, depth[..., None]), dim=-1)


def depth_to_world_points(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject z-depth ``[..., H, W]`` seen by cameras ``[..., 3, 4]``/``[..., 3, 3]`` to world points."""
    return transform_points(depth_to_camera_points(depth, intrinsics), invert_extrinsics(extrinsics))


def project(
    points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points ``[..., *P, 3]`` into cameras ``[..., 3, 4]``/``[..., 3, 3]``.

    Returns pixel coordinates ``[..., *P, 2]`` and z-depth ``[..., *P]`` (``<= 0`` behind the camera, where
    the pixel coordinates are meaningless).
    """
    cam = transform_points(points, extrinsics)
    z = cam[..., 2]
    lead = intrinsics.shape[:-2]
    flat = cam.reshape(*lead, -1, 3)
    pix = flat @ intrinsics.transpose(-1, -2)
    uv = pix[..., :2] / pix[..., 2:].clamp_min(torch.finfo(pix.dtype).tiny)
    return uv.reshape(*points.shape[:-1], 2), z


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int]
) -> torch.Tensor:
    """Cameras ``[..., 3, 4]``/``[..., 3, 3]`` to the ``absT_quaR_FoV`` pose encoding ``[..., 9]``.

    Only the focal lengths of the intrinsics are encoded; the principal point is assumed at the centre.
    """
    height, width = image_size_hw
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    quat = matrix_to_quaternion(extrinsics[..., :3])
    return torch.cat((extrinsics[..., 3], quat, fov_h[..., None], fov_w[..., None]), dim=-1)


def pose_encoding_to_extri_intri(
    pose_encoding: torch.Tensor, image_size_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``absT_quaR_FoV`` encoding ``[..., 9]`` to extrinsics ``[..., 3, 4]`` and intrinsics ``[..., 3, 3]``.

    The principal point is put at ``(W/2, H/2)`` as in the official decoder. ``tan(fov / 2)`` is clamped to at least
    1e-6 as in DA3's decoder (a ReLU'd field of view can be 0), which changes nothing for any real camera.
    """
    if pose_encoding.shape[-1] != POSE_ENCODING_SIZE:
        raise ValueError(
            f"pose encoding must have {POSE_ENCODING_SIZE} values in its last dim, got {list(pose_encoding.shape)}"
        )
    height, width = image_size_hw
    translation, quat, fov = pose_encoding.split((3, 4, 2), dim=-1)
    extrinsics = torch.cat((quaternion_to_matrix(quat), translation[..., None]), dim=-1)
    intrinsics = torch.zeros(*pose_encoding.shape[:-1], 3, 3, dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = (width / 2) / torch.tan(fov[..., 1] / 2).clamp(min=1e-6)
    intrinsics[..., 1, 1] = (height / 2) / torch.tan(fov[..., 0] / 2).clamp(min=1e-6)
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1
    return extrinsics, intrinsics


def rotation_angle_deg(rotations: torch.Tensor) -> torch.Tensor:
    """Rotation angle in degrees of ``[..., 3, 3]`` rotation matrices (the geodesic distance to identity).

    ``atan2(2 sin, 2 cos)`` rather than ``acos`` of the trace, which loses all precision near zero.
    """
    r = rotations
    twice_sin = torch.stack((r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]), -1)
    twice_cos = r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1
    return torch.rad2deg(torch.atan2(twice_sin.norm(dim=-1), twice_cos))
