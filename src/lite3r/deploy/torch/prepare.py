"""A model ready for fast inference: 16-bit weights, FP8 GEMMs where the recipe asks, nothing it never runs.

The runtime owns the model it prepares (changed in place): weights cast once instead of autocasting every
op, the modules the forward never runs dropped (the family's ``parameters_only``: VGGT's track head, 66 M
parameters; DA3's camera encoder and ray branch), and, with a ``quant_state``, the
recipe's linears replaced by :class:`~lite3r.deploy.torch.fp8.FP8Linear` before the cast, so that their e4m3
weights are rounded from the float32 weights exactly as the scales were calibrated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lite3r.deploy.torch.fp8 import FP8Linear, convert_to_fp8
from lite3r.models import family_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def cast_floating(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast every floating parameter and buffer to ``dtype`` except inside :class:`FP8Linear`, whose e4m3
    weights and float32 scales must keep their types (``Module.to`` would turn them into ``dtype`` too)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    fp8_members = {id(m) for layer in model.modules() if isinstance(layer, FP8Linear) for m in layer.modules()}
    for module in model.modules():
        if id(module) not in fp8_members:
            module._apply(cast, recurse=False)
    return model


def prepare_model(
    model: nn.Module,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    heads_dtype: torch.dtype | None = None,
    quant_state: dict[str, Any] | None = None,
    fp8_fast_accum: bool = False,
) -> nn.Module:
    """``model`` in eval mode on ``device``: FP8 linears from ``quant_state`` (if given; ``fp8_fast_accum``: their
    GEMMs with Hopper's fast accumulation), every other weight in ``dtype``, the prediction heads (the family's
    ``heads``) in ``heads_dtype`` (default ``dtype``)."""
    family = family_of(model)
    model.eval().requires_grad_(False)
    for path in family.parameters_only:
        owner, _, name = path.rpartition(".")
        setattr(model.get_submodule(owner), name, None)
    if quant_state is not None:
        convert_to_fp8(model, quant_state, use_fast_accum=fp8_fast_accum)
    model.to(device)
    cast_floating(model, dtype)
    for name in family.heads if heads_dtype is not None else ():
        cast_floating(model.get_submodule(name), heads_dtype)
    return model
