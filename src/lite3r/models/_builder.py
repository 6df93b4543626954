"""``load_model``: preset + overrides + optional checkpoint -> a model in eval mode."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from lite3r.models._checkpoint import load_state_dict_strict, read_checkpoint
from lite3r.models._pretrained import pretrained_weights, require_pretrained
from lite3r.models._registry import get_preset

logger = logging.getLogger(__name__)


def load_model(name: str, checkpoint: str | Path | None = None, *, pretrained: bool = True, **overrides) -> nn.Module:
    """Builds preset ``name`` (see :func:`lite3r.list_models`) with config ``overrides`` applied.

    With ``checkpoint`` (an official-layout ``.pt``/``.pth``/``.bin`` state dict or ``.safetensors``) the weights
    are loaded strictly; the model is built on the ``meta`` device first, so no time or memory goes into a
    random initialisation that would be overwritten. Without one, a preset that ships trained weights
    (``vggt-small``) loads them unless ``pretrained=False``; every other model gets random weights.
    """
    build, config = get_preset(name, **overrides)
    if checkpoint is None and pretrained and pretrained_weights(name) is not None:
        checkpoint = require_pretrained(name)
    if checkpoint is None:
        logger.info("%s: no checkpoint given, weights are randomly initialised", name)
        model = build(config)
    else:
        state_dict = read_checkpoint(checkpoint)
        with torch.device("meta"):
            model = build(config)
        load_state_dict_strict(model, state_dict, source=checkpoint, assign=True)
    return model.eval()


def has_trained_weights(name: str, checkpoint: str | Path | None = None, *, pretrained: bool = True) -> bool:
    """Whether ``load_model(name, checkpoint, pretrained=pretrained)`` gives trained (not random) weights."""
    return checkpoint is not None or (pretrained and pretrained_weights(name) is not None)
