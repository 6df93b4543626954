"""The real FP8 path in PyTorch: fake-quantized linears become ``torch._scaled_mm`` GEMMs on e4m3 tensors.

After QAT or calibration a linear layer computes ``F.linear(fq(x), fq(W), b)`` with ModelOpt's fake
quantizer ``fq(t) = cast_e4m3(clamp(t * 448 / amax, ±448)) * (amax / 448)``. :class:`FP8Linear` keeps the
same numbers but stores ``W`` already cast to float8_e4m3fn and runs the GEMM on FP8 tensor cores:
the input is quantized with its static (calibrated) scale and both dequantization scales go to
``_scaled_mm``, which accumulates in fp32. Only the summation order differs from the fake-quant model.

Where it runs (the fallback policy, see ``docs/distill_fp8.md``):

- CUDA with compute capability >= 8.9 (Ada, Hopper, Blackwell): FP8 tensor-core GEMMs.
- CPU: PyTorch's reference ``_scaled_mm`` (exact fp32 accumulation, slow): for tests and checking only.
- Older CUDA GPUs: :class:`FP8UnsupportedError`, with a one-line reason, at conversion and at call time.
  Keep the fake-quantized model there (same numbers, no speed-up) or use the TensorRT engine.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lite3r.quant import fp8_dequant_scale, fp8_multiplier, quantize_e4m3

MIN_FP8_CAPABILITY = (8, 9)
GEMM_ALIGNMENT = 16  # _scaled_mm needs K and N to be multiples of 16


class FP8UnsupportedError(RuntimeError):
    """The device or a layer cannot run real FP8 GEMMs."""


class FP8Linear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` stored as float8_e4m3fn and a static FP8 scale for ``x``.

    Buffers: ``weight`` ``[out, in]`` e4m3; ``weight_scale`` (dequantization scale, a scalar, or ``[1, out]``
    for per-channel weights); ``input_scale`` (dequantization scale of ``x``) and its reciprocal
    ``input_scale_reciprocal`` (``448 / amax``, what ``x`` is multiplied by before the cast); ``bias``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_amax: torch.Tensor,
        input_amax: torch.Tensor,
        use_fast_accum: bool = False,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if self.in_features % GEMM_ALIGNMENT or self.out_features % GEMM_ALIGNMENT:
            raise FP8UnsupportedError(
                f"FP8 GEMMs need in/out features that are multiples of {GEMM_ALIGNMENT}; this layer is "
                f"{self.in_features} -> {self.out_features} (leave it out of the FP8 recipe)"
            )
        weight_mult = fp8_multiplier(weight_amax.to(weight.device).reshape(-1, 1))
        input_mult = fp8_multiplier(input_amax.to(weight.device).reshape(()))
        self.register_buffer("weight", quantize_e4m3(weight.detach(), weight_mult))
        scale = fp8_dequant_scale(weight_mult)
        self.register_buffer("weight_scale", scale.reshape(()) if scale.numel() == 1 else scale.reshape(1, -1))
        self.register_buffer("input_scale_reciprocal", input_mult)
        self.register_buffer("input_scale", fp8_dequant_scale(input_mult))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.use_fast_accum = use_fast_accum

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, weight_amax: torch.Tensor, input_amax: torch.Tensor, use_fast_accum: bool = False
    ) -> FP8Linear:
        return cls(linear.weight, linear.bias, weight_amax, input_amax, use_fast_accum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # checked when the compiled block is first traced, not per call
            check_fp8_device(x.device)
        out_dtype = _output_dtype(x)
        x2d = x.reshape(-1, self.in_features)
        xq = _quantize_input(x2d, self.input_scale_reciprocal).contiguous()  # _scaled_mm: row-major input
        scale_a = self.input_scale
        if self.weight_scale.ndim:  # per-channel weights: _scaled_mm's row-wise mode wants [M, 1] x [1, N]
            scale_a = scale_a.expand(x2d.shape[0], 1).contiguous()
        gemm_dtype = torch.bfloat16 if self.weight_scale.ndim and x.is_cuda else out_dtype  # row-wise: bf16 only
        y = torch._scaled_mm(
            xq, self.weight.t(), scale_a, self.weight_scale, out_dtype=gemm_dtype, use_fast_accum=self.use_fast_accum
        )
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(out_dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        per = "channel" if self.weight_scale.ndim else "tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3, per-{per} weight scale"


def convert_to_fp8(
    model: nn.Module, quant_state: dict[str, Any] | None = None, *, use_fast_accum: bool = False
) -> nn.Module:
    """Replace every FP8-quantized linear of ``model`` by an :class:`FP8Linear` (in place; returns the model).

    The layers and scales come from ``quant_state`` (a ``quant_state.json`` dict, for a model loaded without
    ModelOpt) or, when it is None, from the model's own ModelOpt quantizers (after QAT or calibration).
    Each layer needs both its weight and its input quantizer. Raises :class:`FP8UnsupportedError` on a CUDA
    GPU without FP8 tensor cores.
    """
    from lite3r.calibration.state import quant_state as read_model_state
    from lite3r.calibration.state import validate_quant_state

    state = validate_quant_state(quant_state) if quant_state is not None else read_model_state(model)
    amax: dict[str, dict[str, Any]] = defaultdict(dict)
    for entry in state["quantizers"]:
        amax[entry["module"]][entry["tensor"]] = entry["amax"]
    for name, tensors in amax.items():
        if set(tensors) != {"weight", "input"}:
            raise FP8UnsupportedError(f"{name} has only a {next(iter(tensors))} quantizer; an FP8 GEMM needs both")
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise FP8UnsupportedError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        check_fp8_device(linear.weight.device)
        layer = FP8Linear.from_linear(
            linear, torch.tensor(tensors["weight"]), torch.tensor(tensors["input"]), use_fast_accum
        )
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, layer)
    return model


def check_fp8_device(device: torch.device) -> None:
    """Raise :class:`FP8UnsupportedError` unless ``device`` can run ``torch._scaled_mm`` on e4m3."""
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise FP8UnsupportedError(f"real FP8 GEMMs run on CUDA (or CPU as a reference); got device {device}")
    name, capability = _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())
    if capability < MIN_FP8_CAPABILITY:
        raise FP8UnsupportedError(
            f"{name} (compute capability {capability[0]}.{capability[1]}) has no FP8 tensor cores; "
            f"real FP8 needs {MIN_FP8_CAPABILITY[0]}.{MIN_FP8_CAPABILITY[1]}+ (Ada, Hopper, Blackwell). "
            "Keep the fake-quantized model (same numbers) or use the TensorRT engine."
        )


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """What ``nn.Linear`` would return: the autocast dtype inside autocast, else the input's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


@functools.cache
def _cuda_capability(index: int) -> tuple[str, tuple[int, int]]:
    return torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)


def _quantize_input(x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
    """On CUDA, one fused pass (bf16 in, e4m3 out); eager would write three float32 copies of the activation,
    which costs more than the FP8 GEMM it feeds. Inside a compiled region (``TorchRuntime``) the plain cast is
    traced instead, so that Inductor fuses it into the kernel that produces ``x`` (LayerNorm, GELU, ...)."""
    if torch.compiler.is_compiling() or not x.is_cuda:
        return quantize_e4m3(x, multiplier)
    return _compiled_cast()(x, multiplier)


@functools.cache
def _compiled_cast():
    return torch.compile(quantize_e4m3, dynamic=True)
