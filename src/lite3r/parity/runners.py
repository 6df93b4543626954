"""Polygraphy runners for every artifact of the pipeline, all fed ``{"images": float32 [1, S, 3, H, W]}``.

``TorchRunner`` runs a lite3r model (teacher or student) that returns the official output dict; Polygraphy's
own ``PytRunner`` expects tuple outputs on CUDA, so it does not fit. ONNX models run in ONNX Runtime (CPU)
through ``OnnxrtRunner``; engines through ``TrtRunner`` where datacenter TensorRT is installed; ``.pt2``
packages through ``Pt2Runner`` (loaded with ``torch._inductor.aoti_load_package``, no lite3r model code).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import OrderedDict
from typing import Callable, Iterable

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from lite3r.models import family_of

INPUT_NAME = "images"


class TorchRunner(BaseRunner):
    """Runs a PyTorch model on the device of its parameters and returns its official outputs as float32."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__(name=name)
        self.model = model
        self.outputs = family_of(model).outputs

    def activate_impl(self) -> None:
        self.model.eval()
        self.device = next(self.model.parameters(), torch.empty(0)).device

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(INPUT_NAME, np.float32, (1, None, 3, None, None))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        images = torch.from_numpy(feed_dict[INPUT_NAME]).to(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.model(images)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (k, np.ascontiguousarray(outputs[k].float().cpu().numpy())) for k in self.outputs if k in outputs
        )


class Pt2Runner(BaseRunner):
    """Runs an AOTInductor package written by ``lite3r.deploy.torch.export_pt2``; loads it on ``activate``."""

    def __init__(self, path: str | os.PathLike, name: str = "pt2") -> None:
        super().__init__(name=name)
        self.path = path
        self.runner = None

    def activate_impl(self) -> None:
        from lite3r.deploy.torch.pt2 import load_pt2

        self.runner = load_pt2(self.path)

    def get_input_metadata_impl(self) -> TensorMetadata:
        height, width = self.runner.image_size
        return TensorMetadata().add(INPUT_NAME, np.float32, (1, None, 3, height, width))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        images = torch.from_numpy(feed_dict[INPUT_NAME])
        start = time.perf_counter()
        outputs = self.runner(images)
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (k, np.ascontiguousarray(outputs[k].float().cpu().numpy())) for k in self.runner.outputs
        )

    def deactivate_impl(self) -> None:
        self.runner = None


def onnx_runner(onnx_path: str | os.PathLike, name: str = "onnx") -> BaseRunner:
    """ONNX Runtime on the CPU; a bf16/fp16 model runs as ``ort_16bit.per_op_rounding`` adapts it (the CPU provider
    has no bf16 arithmetic and computes fp16 in float32), from a temporary copy that lives as long as the runner."""
    import onnx
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from lite3r.parity import ort_16bit

    source: str | Callable[[], str] = str(onnx_path)
    if ort_16bit.is_16bit(onnx.load(source, load_external_data=False)):
        folder = tempfile.TemporaryDirectory(prefix="lite3r-ort-16bit-")  # removed with the runner's loader
        source = lambda: str(ort_16bit.per_op_rounding_file(onnx_path, folder.name))  # noqa: E731 (on activate)
    return OnnxrtRunner(SessionFromOnnx(source, providers=["CPUExecutionProvider"]), name=name)


def engine_runner(engine_path: str | os.PathLike, name: str = "tensorrt") -> BaseRunner:
    """A ``TrtRunner`` for a datacenter TensorRT engine (TensorRT-RTX engines are not run by Polygraphy)."""
    from lite3r.deploy._trt import import_tensorrt
    from lite3r.plugins.tensorrt_sla import register_sla_plugin

    import_tensorrt("tensorrt")
    with contextlib.suppress(ImportError):  # TensorRT < 10.8 has no tensorrt.plugin, so no SLA plugin either
        register_sla_plugin()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name)


def feed_dicts(scenes: Iterable[torch.Tensor | np.ndarray]) -> list[OrderedDict[str, np.ndarray]]:
    """Feeds from image tensors ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` (floats in [0, 1])."""
    feeds = []
    for i, images in enumerate(scenes):
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim == 4:
            array = array[None]
        if array.ndim != 5 or array.shape[0] != 1 or array.shape[2] != 3:
            raise ValueError(f"input {i} has shape {list(array.shape)}; expected [S, 3, H, W] or [1, S, 3, H, W]")
        feeds.append(OrderedDict([(INPUT_NAME, np.ascontiguousarray(array, dtype=np.float32))]))
    if not feeds:
        raise ValueError("parity needs at least one input scene")
    return feeds
