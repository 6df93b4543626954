"""Image files to model input, with the official VGGT preprocessing.

The resize arithmetic (Python ``round`` of the scaled side to a multiple of 14, bicubic PIL resize,
centre crop, white padding, RGBA on white) follows ``vggt/utils/load_fn.py`` so that a checkpoint sees
the inputs it was trained and evaluated on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PATCH_SIZE = 14
MIN_SIDE = PATCH_SIZE
MODES = ("crop", "pad")


class ImageLoadError(ValueError):
    """An image folder or file cannot be turned into model input."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden files (``._x.jpg``) are skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageLoadError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ImageLoadError(f"not a folder: {folder} (pass a folder or a list of image paths)")
    paths = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )  # fmt: skip
    if not paths:
        raise ImageLoadError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def load_images(
    folder_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
    mode: str = "crop",
    target_size: int = 518,
) -> torch.Tensor:
    """Load a scene's views as ``[S, 3, H, W]`` float32 in ``[0, 1]``.

    A folder is read in sorted file-name order; an explicit list keeps its order (view 0 is the reference
    frame of the reconstruction, so the caller may want to choose it).

    - ``crop``: width becomes ``target_size``, height keeps the aspect ratio (rounded to a multiple of 14)
      and is centre-cropped to ``target_size`` if larger.
    - ``pad``: the longer side becomes ``target_size``, the other keeps the aspect ratio, and the image is
      padded with white to a ``target_size`` square.

    Views that still differ in size are padded with white (centred) to the largest height and width.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if target_size <= 0 or target_size % PATCH_SIZE:
        raise ValueError(f"target_size must be a positive multiple of {PATCH_SIZE}, got {target_size}")
    if isinstance(folder_or_paths, (str, os.PathLike)):
        paths = list_images(folder_or_paths)
    else:
        paths = [Path(p) for p in folder_or_paths]
        if not paths:
            raise ImageLoadError("no images given")
    views = [_preprocess(_read_rgb(p), p, mode, target_size) for p in paths]
    height = max(v.shape[1] for v in views)
    width = max(v.shape[2] for v in views)
    return torch.stack([_pad_white(v, height, width) for v in views])


_HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1}
"""Single-channel modes with more than 8 bits, and the value that is white: 16-bit PNG/TIFF (Pillow reads a
16-bit grey PNG as ``I;16`` or ``I``) and float TIFFs in [0, 1]. ``convert("RGB")`` would clip them to white."""


def _read_rgb(path: Path) -> Image.Image:
    """Decode fully (so corrupt files fail here, named) and flatten any transparency onto white. High-bit-depth
    grey images come back as mode ``F`` scaled to [0, 1]; everything else as ``RGB``."""
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _HIGH_DEPTH:
                return _scaled_grey(img, path)
            if img.mode != "RGBA" and (img.mode in ("LA", "PA") or "transparency" in img.info):
                img = img.convert("RGBA")
            if img.mode == "RGBA":
                img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"cannot read image {path}: {e}") from None


def _scaled_grey(img: Image.Image, path: Path) -> Image.Image:
    values = np.asarray(img, dtype=np.float64) / _HIGH_DEPTH[img.mode]
    if not np.isfinite(values).all():
        raise ImageLoadError(f"image {path} has NaN or Inf pixel values")
    if values.min() < 0 or values.max() > 1:
        raise ImageLoadError(
            f"image {path} ({img.mode}) has values in [{values.min():.4g}, {values.max():.4g}] after scaling; "
            "lite3r reads 16-bit images as 0..65535 and float images as 0..1"
        )
    return Image.fromarray(values.astype(np.float32), mode="F")


def _preprocess(img: Image.Image, path: Path, mode: str, target_size: int) -> torch.Tensor:
    width, height = img.size
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(f"image {path} is {width}x{height} px; both sides must be at least {MIN_SIDE} px")
    if mode == "crop" or width >= height:
        new_width, new_height = target_size, _round_to_patch(height * target_size / width)
    else:
        new_width, new_height = _round_to_patch(width * target_size / height), target_size
    if new_width == 0 or new_height == 0:
        raise ImageLoadError(
            f"image {path} is {width}x{height} px, too elongated for {target_size} px input "
            f"(its short side would round to 0 px; keep the aspect ratio under {2 * target_size // PATCH_SIZE}:1)"
        )
    view = _to_tensor(img.resize((new_width, new_height), Image.Resampling.BICUBIC))
    if mode == "crop":
        return view[:, _centre_crop_rows(new_height, target_size)]
    return _pad_white(view, target_size, target_size)


def _round_to_patch(length: float) -> int:
    # Python's round (half to even) as in the official code, so sizes match it exactly.
    return round(length / PATCH_SIZE) * PATCH_SIZE


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image (or a grey ``F`` image in [0, 1]) as ``[3, h, w]`` float32 in ``[0, 1]``."""
    if img.mode == "F":  # bicubic resampling may overshoot [0, 1] a little, as it does for 8-bit images (clipped)
        grey = torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0, 1))
        return grey.expand(3, *grey.shape).clone()
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _centre_crop_rows(height: int, target_size: int) -> slice:
    """The rows kept when a view ``height`` rows tall is centre-cropped to at most ``target_size``."""
    top = max(0, (height - target_size) // 2)
    return slice(top, top + min(height, target_size))


def _pad_white(view: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre ``view [3, h, w]`` on a white ``[3, height, width]`` canvas (extra pixel bottom/right)."""
    pad_h, pad_w = height - view.shape[1], width - view.shape[2]
    if pad_h == 0 and pad_w == 0:
        return view
    return F.pad(view, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=1.0)
