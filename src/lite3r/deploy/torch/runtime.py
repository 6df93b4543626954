"""``TorchRuntime``: the student (or any lite3r model) as a deployment-grade GPU callable.

Three layers, each optional and each measured (``docs/deploy.md``, ``benchmarks/RESULTS.md``):

1. :func:`~lite3r.deploy.torch.prepare.prepare_model`: 16-bit weights everywhere (heads included, or heads kept
   float32), FP8 GEMMs from calibrated scales.
2. Regional ``torch.compile`` of the repeated transformer blocks (DINOv2, frame, global, camera trunk): one
   compiled graph serves every block of a kind, so compile time stays in seconds, and Inductor fuses the
   LayerNorm / GELU / residual / FP8 input quantization around the GEMMs. The SLA op is one node to it.
3. One CUDA graph per input shape (frame count), captured on first use within the ``frames`` range, like a
   TensorRT optimisation profile; all graphs share one memory pool (they never run concurrently). At few
   frames the model is launch bound (thousands of small kernels); replaying a graph removes the host from the
   loop. The forward has no host synchronisation and no host-to-device copy (capture would fail otherwise).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lite3r._timing import timed_seconds
from lite3r.deploy.frames import parse_frames
from lite3r.deploy.torch.prepare import prepare_model, resolve_dtype
from lite3r.models.heads import DPTHead
from lite3r.models.layers import Block
from lite3r.sla.module import check_dense_below, set_runtime_settings
from lite3r.sla.reference import check_qk_codes

SDPA_BACKENDS = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION],
    "default": None,
}
_DYNAMO_CACHE_SIZE = 64  # block kinds x (static, dynamic) x dtypes exceed dynamo's default of 8
# The dense/SLA crossover of VGGT-1B through this runtime (FP8 student, H200, 2026-11-30): exact attention is
# faster at 2748 tokens (2 frames of 518²: 23.2 vs 24.0 ms) and 3572 (4 frames of 336x518: 26.3 vs 26.8 ms), SLA
# from 5358 (6 frames of 336x518: 37.8 vs 39.4 ms) and 5496 (4 frames of 518²: 40.4 vs 41.3 ms). docs/runtime.md.
DENSE_BELOW = 4096
# Round fused intermediates to their 16-bit dtype as eager does: otherwise a LayerNorm output feeding an FP8
# quantization is quantized from float32 and some e4m3 codes differ from the eager / exported model's.
_INDUCTOR_OPTIONS = {"emulate_precision_casts": True}


@dataclass(frozen=True)
class RuntimeOptions:
    """How the model runs. ``frames`` (``"min:opt:max"``) bounds the frame counts graphs are captured for."""

    dtype: str = "bfloat16"
    heads_dtype: str | None = None  # None: same as dtype
    compile: bool = True
    compile_heads: bool = True  # with compile: each DPT head's per-chunk prediction too (10 % faster, H200, 32 frames)
    cuda_graphs: bool = True
    frames: str | None = None
    sdpa: str = "cudnn"
    dense_below: int = DENSE_BELOW  # SLA layers take exact attention below this many tokens (0: never)
    qk_codes: str | None = None  # "int8" / "fp8": SLA layers score Q K^T on 8-bit tensor cores (None: 16 bits)
    # FP8 GEMMs (with a quant_state) accumulate the Hopper way (``_scaled_mm(use_fast_accum=True)``): one VGGT-1B
    # block 4 % faster at 32 and 100 frames, its output within one bf16 step of fp32 accumulation (H200,
    # 2026-12-01, docs/runtime.md). False: fp32 accumulation throughout.
    fp8_fast_accum: bool = True

    def __post_init__(self) -> None:
        check_dense_below(self.dense_below)
        check_qk_codes(self.qk_codes)
        resolve_dtype(self.dtype)
        if self.heads_dtype is not None:
            resolve_dtype(self.heads_dtype)
        if self.sdpa not in SDPA_BACKENDS:
            raise ValueError(f"sdpa must be one of {', '.join(SDPA_BACKENDS)}; got {self.sdpa!r}")
        if self.frames is not None:
            parse_frames(self.frames)


@dataclass
class ShapeSetup:
    """Seconds spent before the first fast call of one input shape."""

    warmup_s: float  # the first eager/compiled calls: compilation and autotuning happen here
    capture_s: float = 0.0  # CUDA graph capture


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor
    outputs: dict[str, torch.Tensor]


@dataclass
class TorchRuntime:
    """``runtime(images)`` -> the model's output dict (fresh tensors, safe to keep across calls).

    ``images``: ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` floats in [0, 1], on any device.
    """

    model: nn.Module
    options: RuntimeOptions
    device: torch.device
    setup: dict[tuple[int, ...], ShapeSetup] = field(default_factory=dict)
    _graphs: dict[tuple[int, ...], _Graph] = field(default_factory=dict)
    _pool: Any = None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        options: RuntimeOptions | None = None,
        *,
        device: str | torch.device = "cuda",
        quant_state: dict[str, Any] | None = None,
    ) -> TorchRuntime:
        """Prepare ``model`` (in place: the runtime owns it) and compile its blocks; graphs come on first use."""
        options = options or RuntimeOptions()
        device = torch.device(device)
        if options.cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; got {device} (use cuda_graphs=False)")
        heads = None if options.heads_dtype is None else resolve_dtype(options.heads_dtype)
        model = prepare_model(
            model, device=device, dtype=resolve_dtype(options.dtype), heads_dtype=heads, quant_state=quant_state,
            fp8_fast_accum=options.fp8_fast_accum,
        )
        if options.compile:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, _DYNAMO_CACHE_SIZE)
        set_runtime_settings(model, dense_below=options.dense_below, qk_codes=options.qk_codes)
        for module in model.modules():
            if options.compile and isinstance(module, Block):
                module.compile(options=_INDUCTOR_OPTIONS)
            if options.compile and options.compile_heads and isinstance(module, DPTHead):
                # The chunk, not the head: every full chunk of frames has the same shapes, so one graph serves
                # them all (compiling the head would unroll its loop over chunks for every frame count).
                module._predict = torch.compile(module._predict, options=_INDUCTOR_OPTIONS)
        return cls(model, options, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = self._check(images)
        key = tuple(images.shape)
        if not self.options.cuda_graphs:
            if key in self.setup:
                return self._forward(images)
            outputs, seconds = timed_seconds(lambda: self._forward(images), self.device)  # compiles, if compiling
            self.setup[key] = ShapeSetup(seconds)
            return outputs
        graph = self._graphs.get(key) or self._capture(images)
        graph.images.copy_(images)
        graph.graph.replay()
        return {name: value.clone() for name, value in graph.outputs.items()}

    def release(self) -> None:
        """Free the captured graphs and their memory pool (the model stays)."""
        self._graphs.clear()
        self._pool = None
        self.setup.clear()

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        backends = SDPA_BACKENDS[self.options.sdpa]
        with sdpa_kernel(backends, set_priority=True) if backends else contextlib.nullcontext():
            return self.model(images)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 4:
            images = images.unsqueeze(0)
        if self.options.frames is not None:
            frames = parse_frames(self.options.frames)
            if not frames.min <= images.shape[1] <= frames.max:
                raise ValueError(
                    f"{images.shape[1]} frames is outside this runtime's range {frames.min}..{frames.max} "
                    "(build it with a wider frames=MIN:OPT:MAX)"
                )
        return images.to(self.device, torch.float32)

    def _capture(self, images: torch.Tensor) -> _Graph:
        static_images = images.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))

        def warm_up() -> None:  # compiles on the first call, autotunes/initialises handles on the second
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(static_images)
            torch.cuda.current_stream(self.device).wait_stream(side)

        _, warmup_s = timed_seconds(warm_up, self.device)
        graph = torch.cuda.CUDAGraph()
        outputs: dict[str, torch.Tensor] = {}

        def capture() -> None:
            with torch.cuda.graph(graph, pool=self._pool):
                outputs.update(self._forward(static_images))

        _, capture_s = timed_seconds(capture, self.device)
        self._pool = self._pool or graph.pool()
        key = tuple(images.shape)
        self.setup[key] = ShapeSetup(warmup_s, capture_s)
        self._graphs[key] = _Graph(graph, static_images, outputs)
        return self._graphs[key]
