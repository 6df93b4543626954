"""The variants ``lite3r bench`` compares, each built from the same float32 teacher on demand.

- ``teacher-official``: how the official demos and the Lite3R paper run the model: float32 weights, bf16 autocast,
  heads in float32, eager, and the family's official settings (VGGT: all aggregator layers kept).
- ``teacher-fast``: the dense teacher through the project's best runtime (:class:`TorchRuntime`).
- ``student-bf16`` / ``student-fp8``: the SLA student through the same runtime, bf16 or FP8 GEMMs (scales from
  the student folder's ``quant_state.json``, else calibrated here on synthetic scenes with ModelOpt).
- ``pt2``: the student's AOTInductor package, loaded as a user would, without lite3r's model code.

A variant that cannot run here raises :class:`NotRunnable`; the bench records the reason instead of a number.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r.deploy.torch import RuntimeOptions, TorchRuntime
from lite3r.models import family_of
from lite3r.sla.module import SparseLinearAttention

VARIANTS = ("teacher-official", "teacher-fast", "student-bf16", "student-fp8", "pt2")
TEACHERS = ("teacher-official", "teacher-fast")


class NotRunnable(RuntimeError):
    """This variant cannot run in this setting (the message says why)."""


@dataclass
class Built:
    """A variant ready to run: ``run(images [1, S, 3, H, W] on the device)`` returns the output dict."""

    run: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    setup: Callable[[tuple[int, ...]], dict[str, float]] = lambda shape: {}
    release: Callable[[], None] = lambda: None
    notes: str = ""


@dataclass
class Context:
    """What every variant is built from: the float32 teacher (on the CPU) and the options."""

    teacher: nn.Module
    device: torch.device
    runtime: RuntimeOptions
    make_student: Callable[[], nn.Module]
    calibration_scenes: Callable[[], list[torch.Tensor]]
    quant_state: dict[str, Any] | None = None
    pt2_path: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def fp8_scales(self) -> dict[str, Any]:
        """The student's FP8 scales: given, or calibrated once (ModelOpt max calibration, bf16 autocast)."""
        if self.quant_state is not None:
            return self.quant_state
        if "quant_state" not in self._cache:
            if importlib.util.find_spec("modelopt") is None:
                raise NotRunnable("ModelOpt is not installed (pip install nvidia-modelopt) and no quant_state.json")
            from lite3r.calibration import calibrate_fp8, quant_state

            student = self.make_student().to(self.device)
            calibrate_fp8(student, self.calibration_scenes(), num_batches=len(self.calibration_scenes()))
            self._cache["quant_state"] = quant_state(student)
            del student
        return self._cache["quant_state"]


def build(name: str, ctx: Context) -> Built:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return _BUILDERS[name](ctx)


def _teacher_official(ctx: Context) -> Built:
    model = family_of(ctx.teacher).as_official(copy.deepcopy(ctx.teacher)).to(ctx.device).eval()

    @torch.no_grad()
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            return model(images)

    official = "".join(f", {k}={v!r}" for k, v in family_of(ctx.teacher).official_settings.items())
    return Built(run, notes=f"float32 weights, bf16 autocast, eager{official}")


def _runtime(model: nn.Module, ctx: Context, quant_state: dict[str, Any] | None = None) -> Built:
    runtime = TorchRuntime.build(model, ctx.runtime, device=ctx.device, quant_state=quant_state)
    options = ctx.runtime
    notes = (f"{options.dtype} weights (heads {options.heads_dtype or options.dtype}), "
             f"compile {'on' if options.compile else 'off'}, CUDA graphs {'on' if options.cuda_graphs else 'off'}, "
             f"SDPA {options.sdpa}")  # fmt: skip
    if any(isinstance(m, SparseLinearAttention) for m in runtime.model.modules()):
        if options.dense_below:
            notes += f", exact attention below {options.dense_below} tokens"
        if options.qk_codes:
            notes += f", SLA Q K^T in {options.qk_codes}"

    def setup(shape: tuple[int, ...]) -> dict[str, float]:
        done = runtime.setup.get(shape)
        return {} if done is None else {"warmup_s": done.warmup_s, "capture_s": done.capture_s}

    return Built(runtime, setup, runtime.release, notes)


def _teacher_fast(ctx: Context) -> Built:
    return _runtime(copy.deepcopy(ctx.teacher), ctx)


def _student_bf16(ctx: Context) -> Built:
    return _runtime(ctx.make_student(), ctx)


def _student_fp8(ctx: Context) -> Built:
    if ctx.device.type == "cuda":
        from lite3r.deploy.torch.fp8 import FP8UnsupportedError, check_fp8_device

        try:
            check_fp8_device(ctx.device)
        except FP8UnsupportedError as e:
            raise NotRunnable(str(e)) from None
    built = _runtime(ctx.make_student(), ctx, quant_state=ctx.fp8_scales())
    accumulation = "fast" if ctx.runtime.fp8_fast_accum else "fp32"
    built.notes += f", FP8 GEMMs (torch._scaled_mm, {accumulation} accumulation) on the recipe's linears"
    return built


def _pt2(ctx: Context) -> Built:
    if ctx.pt2_path is None:
        raise NotRunnable("no model.pt2 given (--pt2 PATH, written by lite3r-export --target torch)")
    from lite3r.deploy.torch.pt2 import load_pt2

    runner = load_pt2(ctx.pt2_path, device=ctx.device)
    return Built(runner, notes=f"AOTInductor package {ctx.pt2_path.name}")


_BUILDERS: dict[str, Callable[[Context], Built]] = {
    "teacher-official": _teacher_official,
    "teacher-fast": _teacher_fast,
    "student-bf16": _student_bf16,
    "student-fp8": _student_fp8,
    "pt2": _pt2,
}
