"""Models in PyTorch with official state-dict layouts, named presets and safe checkpoint loading."""

from __future__ import annotations

from lite3r.models._base import ConfigError
from lite3r.models._builder import has_trained_weights, load_model
from lite3r.models._checkpoint import CheckpointError, checkpoint_filter_fn, load_state_dict_strict, read_checkpoint
from lite3r.models._family import ModelFamily, family_of
from lite3r.models._pretrained import MissingWeightsError, pretrained_weights, require_pretrained, weight_card
from lite3r.models._registry import list_models
from lite3r.models.da3 import DA3Config, DepthAnything3
from lite3r.models.vggt import VGGT, VGGTConfig

__all__ = [
    "VGGT",
    "CheckpointError",
    "ConfigError",
    "DA3Config",
    "DepthAnything3",
    "MissingWeightsError",
    "ModelFamily",
    "VGGTConfig",
    "checkpoint_filter_fn",
    "family_of",
    "has_trained_weights",
    "list_models",
    "load_model",
    "load_state_dict_strict",
    "pretrained_weights",
    "read_checkpoint",
    "require_pretrained",
    "weight_card",
]
