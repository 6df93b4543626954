"""The PyTorch runtime: 16-bit model, FP8 GEMMs, regional compile, CUDA graphs (``TorchRuntime``)."""

from __future__ import annotations

from lite3r.deploy.torch.prepare import cast_floating, prepare_model
from lite3r.deploy.torch.runtime import RuntimeOptions, ShapeSetup, TorchRuntime

__all__ = ["RuntimeOptions", "ShapeSetup", "TorchRuntime", "cast_floating", "prepare_model"]
