"""What every model family shares: config errors and overrides, the input check and the input normalisation."""

from __future__ import annotations

import dataclasses

import torch

# ImageNet statistics: VGGT's aggregator and DA3's input processor both normalise [0, 1] images with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """An invalid model configuration (unknown field, inconsistent sizes)."""


class ModelConfig:
    """Mixin for a family's frozen config dataclass: ``replace`` with a clear error for unknown fields."""

    display_name = "model"  # the family name used in messages

    def _check(self, layers: str, channels: str, problems: list[str]) -> None:
        """Makes the 4-tuples ``layers`` (head layer indices) and ``channels`` tuples, then raises one
        :class:`ConfigError` naming every problem: the ViT sizes, those two fields and the family's ``problems``."""
        for name in (layers, channels):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = list(problems)
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % (4 * self.num_heads):
            problems.append(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must give a head size divisible by 4 "
                "(2D RoPE splits each head into rows/columns and sin/cos halves)"
            )
        indices = getattr(self, layers)
        if len(indices) != 4 or not all(0 <= i < self.depth for i in indices):
            problems.append(f"{layers} {indices} must be 4 layer indices in [0, depth={self.depth})")
        if len(getattr(self, channels)) != 4:
            problems.append(f"{channels} {getattr(self, channels)} must have 4 entries")
        if problems:
            raise ConfigError("; ".join(problems))

    def replace(self, **overrides):
        """A copy with ``overrides`` applied; unknown names raise :class:`ConfigError` listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown {self.display_name} config field(s) {', '.join(unknown)}; valid fields: {', '.join(valid)}"
            )
        return dataclasses.replace(self, **overrides)


def check_images(images: torch.Tensor, patch_size: int, model: str) -> torch.Tensor:
    """``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` float images -> ``[B, S, 3, H, W]``; one clear error otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
        got = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{model} expects images [S, 3, H, W] or [B, S, 3, H, W]; got {got}")
    if not images.is_floating_point():
        raise ValueError(f"{model} expects float images in [0, 1]; got {images.dtype} (divide uint8 images by 255)")
    if images.ndim == 4:
        images = images.unsqueeze(0)
    *_, C, H, W = images.shape
    p = patch_size
    if C != 3 or H % p or W % p or H == 0 or W == 0:
        raise ValueError(
            f"{model} expects 3-channel images with height and width multiples of {p}; "
            f"got {C} channels, {H}x{W} (resize or crop, e.g. to {max(p, H // p * p)}x{max(p, W // p * p)})"
        )
    return images


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in ``[0, 1]`` -> ImageNet-normalised, as both official pipelines feed their networks."""
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(shape)
    return (images - mean) / std
