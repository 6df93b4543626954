"""Named presets: a model name maps to a builder and its default config (timm-style registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from lite3r.models._base import ConfigError, ModelConfig
from lite3r.models.da3 import DA3Config, DepthAnything3
from lite3r.models.vggt import VGGT, VGGTConfig


class Preset(NamedTuple):
    build: Callable[[ModelConfig], nn.Module]
    config: ModelConfig
    weights: str | None = None  # trained weights shipped as package data (lite3r/models/weights/<file>)


_PRESETS: dict[str, Preset] = {
    # VGGT-1B exactly as the official VGGT() builds it; loads the released checkpoint strictly.
    "vggt": Preset(VGGT, VGGTConfig()),
    # Same code at toy sizes (0.35 M parameters) for tests and CPU demos: a 2-frame 112x112 forward takes
    # tens of milliseconds. Every size is expressible with the official modules, so
    # scripts/compare_official_vggt.py checks it against them. DPT reads layers 1, 2, 4, 5 of 6, so the
    # aggregator drops layers 0 and 3, as VGGT-1B drops 19 of its 24.
    "vggt-tiny": Preset(
        VGGT,
        VGGTConfig(
            img_size=112,
            embed_dim=32,
            depth=6,
            num_heads=2,
            dinov2_depth=2,
            dinov2_num_heads=2,
            camera_trunk_depth=1,
            camera_num_heads=2,
            dpt_features=8,
            dpt_out_channels=(4, 8, 16, 16),
            dpt_layers=(1, 2, 4, 5),
            track_features=8,
            track_hidden_size=16,
            track_depth=1,
        ),
    ),
    # Trained here on synthetic scenes (lite3r train-teacher), shipped as package data: the CPU demo and the
    # model the SLA/FP8 experiment measures. Head dim 64 (the SLA Triton kernels take 64/128); 9.86 M
    # parameters, 18.8 MiB in bf16. At 224x224 a view is 256 patches + 5 special tokens, so 16 views give the
    # global attention 66 key blocks of 64 (kh = 5 % keeps 4). DPT reads 1, 2, 4, 5 of 6, like vggt-tiny.
    # LayerScale starts at 0.1 rather than 0.01: trained from scratch for minutes, the residual branches
    # should not spend the first hundreds of steps growing (it is a learned parameter: inference is the same).
    "vggt-small": Preset(
        VGGT,
        VGGTConfig(
            img_size=224,
            embed_dim=192,
            depth=6,
            num_heads=3,
            dinov2_depth=2,
            dinov2_num_heads=3,
            camera_trunk_depth=1,
            camera_num_heads=6,
            dpt_features=32,
            dpt_out_channels=(32, 64, 96, 96),
            dpt_layers=(1, 2, 4, 5),
            init_values=0.1,
            track_features=4,
            track_hidden_size=8,
            track_depth=1,
        ),
        weights="vggt-small.safetensors",
    ),
    # DA3-Large exactly as the official da3-large.yaml builds DepthAnything3Net; loads the released checkpoint.
    "da3-large": Preset(DepthAnything3, DA3Config()),
    # Same code at toy sizes for tests. Output layers 1, 3, 4, 5 of 6 cover every case the large model's
    # (11, 15, 19, 23) and more: before the camera token (1), cross-view (3, 5) and per-view (4) blocks.
    # scripts/compare_official_da3.py checks it against the official modules built with these sizes.
    "da3-tiny": Preset(
        DepthAnything3,
        DA3Config(
            img_size=112,
            embed_dim=32,
            depth=6,
            num_heads=2,
            alt_start=2,
            qknorm_start=2,
            rope_start=2,
            out_layers=(1, 3, 4, 5),
            head_features=8,
            head_out_channels=(4, 8, 16, 16),
            cam_enc_depth=1,
            cam_enc_num_heads=2,
            view_size=112,
        ),
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`lite3r.load_model`."""
    return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> tuple[Callable[[ModelConfig], nn.Module], ModelConfig]:
    """The builder of ``name`` and its config with ``overrides`` applied."""
    preset = _preset(name)
    return preset.build, preset.config.replace(**overrides)


def shipped_weights_name(name: str) -> str | None:
    """File name of the trained weights preset ``name`` ships as package data, or None (random weights)."""
    return _preset(name).weights


def _preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _PRESETS[name]
