"""What every model family shares: config errors and overrides, the input check and the input normalisation."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

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


class ImageNormalization(nn.Module):
    """``(images - mean) / std`` in float32 with the ImageNet constants, as both official pipelines feed their
    networks; the constants are device buffers.

    Buffers instead of ``torch.tensor(...)`` in ``forward``: no host-to-device copy per call, so the model can
    be captured in a CUDA graph. They follow the model's device but never its dtype (casting the model to
    bf16 must not round the constants), and they are not persistent (the official state dicts have no such keys).
    """

    def __init__(self) -> None:
        super().__init__()
        self._make_buffers(torch.device("cpu"))

    def _make_buffers(self, device: torch.device) -> None:
        for name, values in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
            self.register_buffer(
                name, torch.tensor(values, dtype=torch.float32, device=device).view(1, 1, 3, 1, 1), persistent=False
            )

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._make_buffers(self.mean.device)  # keep the device fn chose, restore exact float32 values
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std
