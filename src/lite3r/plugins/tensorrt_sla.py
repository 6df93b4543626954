"""The SLA core as a TensorRT quickly-deployable plugin (``tensorrt.plugin``, datacenter TensorRT >= 10.8).

The ONNX parser turns a node ``SparseLinearAttentionCore`` (domain and ``plugin_namespace`` ``lite3r``) into
this plugin once ``register_sla_plugin()`` has run; the engine then embeds the PTX from ``aot_impl`` and
launches it without Python. TensorRT-RTX has no ``tensorrt.plugin``: there the node's function body runs.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the decorated functions' annotations
as live objects (``issubclass(annotation, TensorDesc)``), which string annotations would break.
"""

from typing import List, Tuple

from lite3r.plugins import contract
from lite3r.plugins.sla_kernel import compile_sla_kernel, extra_args, grid

PLUGIN_ID = f"{contract.NAMESPACE}::{contract.CORE_OP}"
_TRT_TYPES = {"fp16": "FP16", "bf16": "BF16", "fp32": "FP32", "i32": "INT32"}


def _io_types() -> str:
    """Type combinations per I/O (q, k, v, proj_w, proj_b, lut, kv_state, k_state, out) from the contract; "|"
    options pair up by position (fp16 I/O with fp32 kv_state, bf16 I/O with bf16 kv_state)."""
    per_io = [contract.dtypes(io) for io in contract.IO_DTYPES]
    names = per_io[0]
    return ", ".join("|".join(dict.fromkeys(_TRT_TYPES[types[name]] for types in per_io)) for name in names)


IO_TYPES = _io_types()
_registered = False


def _import_plugin_api():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError:
        raise ImportError(
            "the SLA TensorRT plugin needs datacenter TensorRT >= 10.8 with tensorrt.plugin: "
            "pip install 'lite3r[tensorrt]' on a machine with an NVIDIA GPU"
        ) from None
    return trt, trtp


def _build_gpu_target() -> int:
    """Compute capability of the GPU the engine is built on (TensorRT builds for the GPU it runs on)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def register_sla_plugin() -> str:
    """Register ``lite3r::SparseLinearAttentionCore`` with TensorRT (once per process); returns the plugin id.

    Call before parsing an ONNX model; ``lite3r.deploy.build_engine`` does this for datacenter TensorRT.
    """
    global _registered
    if not _registered:
        _define(*_import_plugin_api())
        _registered = True
    return PLUGIN_ID


def _define(trt, trtp) -> None:
    io_dtypes = {trt.DataType.HALF: "fp16", trt.DataType.BF16: "bf16"}

    @trtp.register(PLUGIN_ID)
    def _shape(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        proj_w: trtp.TensorDesc,
        proj_b: trtp.TensorDesc,
        lut: trtp.TensorDesc,
        kv_state: trtp.TensorDesc,
        k_state: trtp.TensorDesc,
        block_q: int,
        block_k: int,
        feature_map: str,
        scale: float,
    ) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(PLUGIN_ID)
    def _autotune(q, k, v, proj_w, proj_b, lut, kv_state, k_state, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(IO_TYPES, "LINEAR")]

    # TensorRT passes every attribute, in registration order, to aot_impl; declare them all.
    @trtp.aot_impl(PLUGIN_ID)
    def _aot_impl(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        proj_w: trtp.TensorDesc,
        proj_b: trtp.TensorDesc,
        lut: trtp.TensorDesc,
        kv_state: trtp.TensorDesc,
        k_state: trtp.TensorDesc,
        block_q: int,
        block_k: int,
        feature_map: str,
        scale: float,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        kernel = compile_sla_kernel(
            io_dtypes[q.dtype], int(q.shape[3]), block_q, block_k,
            feature_map=feature_map, scale=scale, target=_build_gpu_target(),
        )
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = grid(q.shape_expr, block_q, trtp.cdiv)
        launch.block_x = kernel.block_x
        launch.shared_mem = kernel.shared_mem
        scalars = extra_args(q.shape_expr, lut.shape_expr)
        args = trtp.SymIntExprs(len(scalars))
        for i, value in enumerate(scalars):
            args[i] = trtp.SymInt32(value)
        return kernel.name, kernel.ptx, launch, args
