"""A model family's contract with the pipeline: what every stage asks a model instead of assuming VGGT.

Each model carries its family as ``model.family`` (``family_of(model)`` asks with a clear error). SLA conversion,
FP8 recipes, export, parity, prediction, metrics, distillation losses and the fast runtime read it, so a new
backbone is one model file that builds its ``ModelFamily``, plus presets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Outputs = Mapping[str, torch.Tensor]
SLA_LAYER_SETS = ("global", "all")


@dataclass(frozen=True)
class ModelFamily:
    """What the pipeline stages need to know about a model family.

    Camera conventions are those of :mod:`lite3r.geometry` for every family: ``cameras`` returns OpenCV
    camera-from-world extrinsics ``[..., S, 3, 4]`` and pixel intrinsics ``[..., S, 3, 3]``; ``pose_encoding``
    the 9-value ``absT_quaR_FoV`` encoding of those cameras (VGGT's ``pose_enc``), which losses and metrics use.
    """

    name: str
    # Official output keys (= ONNX output names = parity keys, in the contract's order) and their shapes for one
    # scene, "S" views of "H" x "W" (a batch dimension comes first).
    output_shapes: Mapping[str, tuple[str | int, ...]]
    image_size: int  # default view size (square), the official preprocessing's
    sla_layers: Mapping[str, str]  # "global" (cross-view attention) / "all": regex on Attention module names
    fp8_layers: tuple[str, ...]  # fnmatch patterns of the transformer blocks whose linears run in FP8
    heads: tuple[str, ...]  # prediction-head modules (kept in high precision; the runtime may keep them float32)
    parameters_only: tuple[str, ...]  # modules that exist for strict loading but never run (the runtime drops them)
    cameras: Callable[[Outputs, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]]
    pose_encoding: Callable[[Outputs, tuple[int, int]], torch.Tensor]
    depth_channel: bool  # depth is [..., H, W, 1] (VGGT) rather than [..., H, W] (DA3)
    points: str | None = None  # key of a predicted world-point map ([..., H, W, 3]), if the family has one
    # Tokens at the start of every frame that gather the scene (VGGT: camera + registers); the SLA student attends
    # them densely (SparseLinearAttention.dense_tokens). DA3 keeps 0 until a trained DA3 shows the same pose loss.
    summary_tokens: int = 0
    # Tokens of one H x W view in the cross-view attention (patches + the family's extra tokens): the sequence of S
    # views is S times this, which picks dense or SLA attention against a crossover (docs/runtime.md).
    frame_tokens: Callable[[int, int], int] | None = None
    official_settings: Mapping[str, Any] = field(default_factory=dict)  # attribute path -> value (see below)

    def __post_init__(self) -> None:
        missing = [s for s in SLA_LAYER_SETS if s not in self.sla_layers]
        if missing:
            raise ValueError(f"{self.name}: sla_layers lacks {missing}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.output_shapes)

    def shapes(self, views: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """The shape of each output for one scene of ``views`` views of ``height`` x ``width``."""
        sizes = {"S": views, "H": height, "W": width}
        return {k: tuple(sizes.get(d, d) for d in dims) for k, dims in self.output_shapes.items()}

    def depth(self, outputs: Outputs) -> torch.Tensor:
        """The predicted depth without a channel dimension: ``[..., H, W]``."""
        return outputs["depth"][..., 0] if self.depth_channel else outputs["depth"]

    def sla_filter(self, layers: str) -> Callable[[str, nn.Module], bool]:
        """``(name, module) -> bool`` selecting the ``"global"`` or ``"all"`` attention layers for SLA."""
        if layers not in self.sla_layers:
            raise ValueError(f"layers must be one of {tuple(self.sla_layers)} or a callable (name, module) -> bool; "
                             f"got {layers!r}")
        pattern = re.compile(self.sla_layers[layers])
        return lambda name, module: bool(pattern.search(name))

    def as_official(self, model: nn.Module) -> nn.Module:
        """Undo, in place, lite3r's deviations from the official forward that change its cost but not its outputs
        (``official_settings``, e.g. VGGT's aggregator keeping every layer), for a like-for-like benchmark."""
        for path, value in self.official_settings.items():
            owner, _, attribute = path.rpartition(".")
            setattr(model.get_submodule(owner), attribute, value)
        return model


def family_of(model: nn.Module) -> ModelFamily:
    """``model.family``, or a clear error for a model that is not a lite3r model."""
    family = getattr(model, "family", None)
    if not isinstance(family, ModelFamily):
        raise TypeError(
            f"{type(model).__name__} is not a lite3r model (it has no `family`); build it with lite3r.load_model"
        )
    return family
