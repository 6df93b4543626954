"""Which layers run in FP8: one recipe shared by QAT, PTQ calibration, the FP8 runtime and the exporter.

A recipe is data (module-name patterns), so every stage agrees on the same set of layers and a user can
override it in one place. Only ``nn.Linear`` layers are ever quantized; the heads (camera, depth, point,
track) stay in high precision because they are small and their outputs are the metrics.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

E4M3_MAX = 448.0
"""Largest finite float8 e4m3fn value: a quantizer maps ``amax`` to it, so ``scale = amax / 448``."""

E4M3_BITS = (4, 3)
"""ModelOpt's ``num_bits`` for FP8 e4m3 (exponent, mantissa bits)."""

DEFAULT_FP8_SKIP = ("*proj_lin*",)
"""SLA's linear-branch projection (one ``D x D`` linear shared by the heads): tiny, trained during distillation,
and kept exact."""


class QuantRecipeError(ValueError):
    """A quantization recipe that selects no layer, or a model it cannot be applied to."""


@dataclass(frozen=True)
class FP8Recipe:
    """FP8 e4m3 for weights and activations of the selected ``nn.Linear`` layers.

    ``layers`` and ``skip`` are :func:`fnmatch` patterns on module names (as in ``model.named_modules()``);
    a layer is quantized when it matches some ``layers`` pattern and no ``skip`` pattern. ``layers=None``
    (the default) means the model family's transformer trunk (``model.family.fp8_layers``: VGGT's DINOv2 and
    frame/global blocks, DA3's backbone blocks; qkv, proj, fc1, fc2). Scales are per tensor (what TensorRT and
    ``torch._scaled_mm`` take); ``per_channel_weights`` switches weights to one scale per output channel.
    """

    layers: tuple[str, ...] | None = None
    skip: tuple[str, ...] = DEFAULT_FP8_SKIP
    per_channel_weights: bool = False

    def for_model(self, model: nn.Module) -> FP8Recipe:
        """This recipe with ``layers=None`` replaced by the patterns of ``model``'s family."""
        if self.layers is not None:
            return self
        from lite3r.models import family_of

        return replace(self, layers=family_of(model).fp8_layers)

    def selects(self, name: str) -> bool:
        if self.layers is None:
            raise QuantRecipeError("this recipe's layers come from a model: use recipe.for_model(model)")
        return any(fnmatch.fnmatchcase(name, p) for p in self.layers) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.skip
        )

    def linear_names(self, model: nn.Module) -> list[str]:
        """Names of the ``nn.Linear`` layers this recipe quantizes in ``model``; raises if there are none."""
        recipe = self.for_model(model)
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and recipe.selects(n)]
        if not names:
            sample = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:3]
            raise QuantRecipeError(
                f"FP8 recipe layers={list(recipe.layers)} skip={list(self.skip)} selects no nn.Linear layer; "
                f"linear layers are named like {sample}"
            )
        return names

    def modelopt_config(self) -> dict[str, Any]:
        """The ``mtq.quantize`` config: ModelOpt's FP8 format, restricted to the selected linears (of a recipe with
        its layers set: :meth:`for_model`).

        ModelOpt matches the same fnmatch patterns against quantizer names (``<module>.weight_quantizer``),
        so the layers it enables are exactly :meth:`linear_names`.
        """
        if self.layers is None:
            raise QuantRecipeError("this recipe's layers come from a model: use recipe.for_model(model)")
        e4m3 = {"num_bits": E4M3_BITS, "axis": None}
        weight = {**e4m3, "axis": 0} if self.per_channel_weights else e4m3
        tensors = (("weight", weight), ("input", e4m3))
        entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
        entries += [
            {"quantizer_name": f"{pattern}.{tensor}_quantizer", "parent_class": "nn.Linear", "cfg": cfg}
            for pattern in self.layers
            for tensor, cfg in tensors
        ]
        entries += [
            {"quantizer_name": f"{pattern}.{tensor}_quantizer", "enable": False}
            for pattern in self.skip
            for tensor, _ in tensors
        ]
        return {"quant_cfg": entries, "algorithm": "max"}
