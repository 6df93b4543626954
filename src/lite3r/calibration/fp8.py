"""FP8 post-training calibration with ModelOpt: insert fake quantizers, then record activation ranges.

Used on its own (PTQ, when no QAT is run) and as the first step of FP8-aware distillation. Calibration
is ModelOpt's ``max`` algorithm: each static scale is the absolute maximum seen over the calibration
batches, which is what a static-scale FP8 GEMM (TensorRT, ``torch._scaled_mm``) needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import nn

from lite3r.data.datasets import item_images
from lite3r.quant import FP8Recipe


class CalibrationError(ValueError):
    """Calibration cannot run on the given model or data."""


def quantize_fp8(
    model: nn.Module, recipe: FP8Recipe | None = None, forward_loop: Callable[[nn.Module], Any] | None = None
) -> nn.Module:
    """Insert ModelOpt FP8 fake quantizers on the recipe's linears and calibrate them with ``forward_loop``.

    Without a ``forward_loop`` only the weight scales are set. The model is changed in place and returned.
    """
    from lite3r.calibration._modelopt import modelopt_quantization

    mtq = modelopt_quantization()
    recipe = (recipe or FP8Recipe()).for_model(model)
    recipe.linear_names(model)  # a recipe that selects nothing fails here, with the layer names it saw
    return mtq.quantize(model, recipe.modelopt_config(), forward_loop)


def calibrate_fp8(
    model: nn.Module,
    data: Iterable[Any],
    *,
    recipe: FP8Recipe | None = None,
    num_batches: int = 4,
    bf16: bool = True,
) -> nn.Module:
    """FP8 PTQ: quantize ``model`` (in place) and calibrate on the first ``num_batches`` items of ``data``.

    ``data`` yields scenes, image tensors ``[S, 3, H, W]`` / ``[B, S, 3, H, W]`` or dicts with ``images``;
    they are moved to the model's device. On CUDA the calibration forward runs under bf16 autocast when
    ``bf16`` (the precision the FP8 layers' inputs have at deployment).
    """
    if num_batches < 1:
        raise CalibrationError(f"num_batches must be at least 1, got {num_batches}")
    batches = [item_images(item) for item in islice(data, num_batches)]
    if not batches:
        raise CalibrationError("the calibration data is empty")
    device = next(model.parameters()).device

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad(), autocast(device, bf16):
            for images in batches:
                m(images.to(device))

    was_training = model.training
    model.eval()
    try:
        return quantize_fp8(model, recipe, forward_loop)
    finally:
        model.train(was_training)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when asked; full precision elsewhere (CPU bf16 is slow and not what we deploy)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
