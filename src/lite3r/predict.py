"""Run a reconstruction model on a set of views and save what it predicts.

This is the Python side of ``lite3r predict``: the CLI only parses arguments and prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lite3r._io import staged_output
from lite3r.models import ModelFamily, family_of
from lite3r.viz import contact_sheet

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N``, with a clear error when CUDA is asked for but absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``images [S,3,H,W]`` and return the official outputs of the one batch, float32 on CPU.

    Reduced precision is applied with autocast, as the official VGGT demo does: the heads keep float32.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = images.to(device, torch.float32)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
    return {k: out[k][0].float().cpu() for k in family_of(model).outputs}


def save_prediction(
    out: str | Path,
    images: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    family: ModelFamily,
    metrics: dict[str, float] | None = None,
) -> list[Path]:
    """Write ``predictions.npz`` (a ``family`` model's outputs of one scene + its cameras as ``extrinsics`` /
    ``intrinsics``), ``contact_sheet.png`` and ``metrics.json``.

    All files appear together or not at all.
    """
    height, width = images.shape[-2:]
    extrinsics, intrinsics = family.cameras(outputs, (height, width))
    arrays = {k: v.numpy() for k, v in outputs.items()}
    arrays.update(extrinsics=extrinsics.numpy(), intrinsics=intrinsics.numpy())
    with staged_output(out) as stage:
        np.savez_compressed(stage / "predictions.npz", **arrays)
        contact_sheet(
            stage / "contact_sheet.png",
            images.numpy(),
            family.depth(outputs).numpy(),
            arrays["depth_conf"],
        )
        if metrics is not None:
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        names = sorted(p.name for p in stage.iterdir())
    return [Path(out) / n for n in names]
