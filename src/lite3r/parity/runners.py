"""Polygraphy runners for every artifact of the pipeline, all fed ``{"images": float32 [1, S, 3, H, W]}``.

``TorchRunner`` runs a lite3r model (teacher or student) that returns the official output dict; Polygraphy's
own ``PytRunner`` expects tuple outputs on CUDA, so it does not fit. ONNX models run in ONNX Runtime (CPU)
through ``OnnxrtRunner`` on a session from :class:`SessionFromOnnxPath`; engines through ``TrtRunner`` where
datacenter TensorRT is installed; ``.pt2`` packages through ``Pt2Runner`` (loaded with
``torch._inductor.aoti_load_package``, no lite3r model code); the GPU runtime through ``TorchRuntimeRunner``.

ONNX Runtime before 1.32 rewrites ``DequantizeLinear -> MatMul`` into ``MatMulIntegerToFloat`` without checking
the element type, which rejects FLOAT8E4M3FN inputs, so every lite3r session switches ONNX Runtime's Q/DQ
rewrites off (``ONNXRUNTIME_CONFIG``). The float result is the same: the rewrites fuse, they do not change the
math. :func:`probe_onnxruntime` runs a small graph of the export's form first, so an unusable ONNX Runtime is
one error before any long stage.
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
ONNXRUNTIME_CONFIG = {"session.disable_quant_qdq": "1"}
"""Session config entries of every ONNX Runtime session lite3r opens (see the module docstring)."""


class OnnxRuntimeError(RuntimeError):
    """ONNX Runtime cannot load or run a lite3r graph."""


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


class TorchRuntimeRunner(BaseRunner):
    """Runs a :class:`lite3r.deploy.torch.TorchRuntime` (16-bit model, compiled blocks, CUDA graphs, FP8 GEMMs, as
    its options say) and returns its official outputs as float32."""

    def __init__(self, runtime, name: str = "runtime") -> None:
        super().__init__(name=name)
        self.runtime = runtime
        self.outputs = family_of(runtime.model).outputs

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(INPUT_NAME, np.float32, (1, None, 3, None, None))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.runtime(torch.from_numpy(feed_dict[INPUT_NAME]))  # synchronises: fresh tensors
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (k, np.ascontiguousarray(outputs[k].float().cpu().numpy())) for k in self.outputs if k in outputs
        )


class SessionFromOnnxPath:
    """Lazy loader in Polygraphy's style: a CPU ``InferenceSession`` with :data:`ONNXRUNTIME_CONFIG`, of a path,
    serialized bytes, or a callable that returns the path when the session is made. A model that ONNX Runtime
    cannot load is one :class:`OnnxRuntimeError` naming the runtime's version and reason."""

    def __init__(self, model: str | os.PathLike | bytes | Callable[[], str]) -> None:
        self.model = model if isinstance(model, bytes) or callable(model) else str(model)

    def __call__(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key, value in ONNXRUNTIME_CONFIG.items():
            options.add_session_config_entry(key, value)
        model = self.model() if callable(self.model) else self.model
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise OnnxRuntimeError(f"onnxruntime {ort.__version__} cannot load the model: {_first_line(e)}") from None


class PerturbedTorchRunner(TorchRunner):
    """A ``TorchRunner`` that multiplies its input, and the input of every FP8 activation quantizer, by
    ``1 + scale * N(0, 1)`` (seeded): the float noise an export adds in every layer, applied to the reference
    itself where the rounding decisions are taken, to measure how much its outputs move under it (the noise
    floor). Weight quantizers are left alone: an export stores exactly the student's weight codes."""

    def __init__(self, model: torch.nn.Module, name: str, scale: float, seed: int) -> None:
        super().__init__(model, name)
        self.scale, self.seed = scale, seed

    def activate_impl(self) -> None:
        super().activate_impl()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.hooks = [
            module.register_forward_pre_hook(lambda _, args: (self._perturb(args[0]), *args[1:]))
            for name, module in self.model.named_modules()
            if name.endswith("input_quantizer") and getattr(module, "is_enabled", False)
        ]

    def deactivate_impl(self) -> None:
        for hook in self.hooks:
            hook.remove()
        super().deactivate_impl()

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x.device, x.dtype)
        return x * (1 + self.scale * noise)

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        images = self._perturb(torch.from_numpy(feed_dict[INPUT_NAME]))
        return super().infer_impl({INPUT_NAME: images.numpy()})


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
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from lite3r.parity import ort_16bit

    source: str | Callable[[], str] = str(onnx_path)
    if _is_16bit(source):
        folder = tempfile.TemporaryDirectory(prefix="lite3r-ort-16bit-")  # removed with the runner's loader
        source = lambda: str(ort_16bit.per_op_rounding_file(onnx_path, folder.name))  # noqa: E731 (on activate)
    return OnnxrtRunner(SessionFromOnnxPath(source), name=name)


def _is_16bit(path: str) -> bool:
    """Whether the ONNX file at ``path`` computes in bf16/fp16; a file onnx cannot read is left to ONNX Runtime,
    whose error then names the runtime (one line in the parity report)."""
    import onnx
    from google.protobuf.message import DecodeError

    from lite3r.parity import ort_16bit

    try:
        return ort_16bit.is_16bit(onnx.load(path, load_external_data=False))
    except (OSError, DecodeError):
        return False


def probe_onnxruntime() -> str:
    """Run a small graph of the exported form (an SLA node with its functions, an FP8 Q/DQ linear) in ONNX
    Runtime the way parity does; returns its version, or raises :class:`OnnxRuntimeError` in seconds, before an
    export spends minutes on calibration and tracing."""
    import onnxruntime as ort

    session = SessionFromOnnxPath(_probe_model().SerializeToString())()
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 1, 8, _PROBE_DIM), dtype=np.float32) for n in "qkv"}
    try:
        (out,) = session.run(None, feeds)
    except Exception as e:
        raise OnnxRuntimeError(f"onnxruntime {ort.__version__} cannot run lite3r's graphs: {_first_line(e)}") from None
    if out.shape != (1, 1, 8, _PROBE_DIM) or not np.isfinite(out).all():
        raise OnnxRuntimeError(f"onnxruntime {ort.__version__} computes a wrong result on lite3r's graphs")
    return ort.__version__


_PROBE_DIM = 16


def _probe_model():
    """``Linear(SLA(q, k, v))`` with FP8 Q/DQ on the linear, built by the exporter's own passes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lite3r.exporter.qdq import insert_fp8_qdq
    from lite3r.exporter.sla_onnx import DOMAIN, SLAOptions, sla_functions, sla_node

    options = SLAOptions(0.5, 0.25, 64, 64, "softmax")
    dim, shape = _PROBE_DIM, [1, 1, "L", _PROBE_DIM]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
               for n, s in (("w", (dim, dim)), ("b", (dim,)), ("fc_t", (dim, dim)))]  # fmt: skip
    matmul = helper.make_node("MatMul", ["attn", "fc_t"], ["out"])
    matmul.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'fc', 'linear']")
    graph = helper.make_graph(
        [sla_node(["q", "k", "v", "w", "b"], "attn", options, dim), matmul], "lite3r_probe",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)], weights,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=sla_functions(options), ir_version=10)
    entry = {"module": "fc", "format": "e4m3", "num_bits": [4, 3], "axis": None, "amax": 2.0}
    insert_fp8_qdq(model, {"quantizers": [entry | {"tensor": "input"}, entry | {"tensor": "weight"}]})
    onnx.checker.check_model(model, full_check=True)
    return model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines() or [type(error).__name__])[-1 if text.endswith(":") else 0][:400]


def engine_runner(engine_path: str | os.PathLike, name: str = "tensorrt") -> BaseRunner:
    """A ``TrtRunner`` for a datacenter TensorRT engine (TensorRT-RTX engines are not run by Polygraphy)."""
    from lite3r.deploy.tensorrt.flavour import import_tensorrt
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
