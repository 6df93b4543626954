"""The TensorRT runtime: engines built from lite3r's ONNX export (datacenter TensorRT or TensorRT-RTX), the SLA
plugin registered where the flavour has Python plugins, and how each custom node resolved. Names are exported
lazily: the CLI's error handling imports ``flavour`` without pulling in onnx and torch."""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "BuildReport": "lite3r.deploy.tensorrt.engine",
    "EngineFromOnnx": "lite3r.deploy.tensorrt.engine",
    "build_engine": "lite3r.deploy.tensorrt.engine",
    "DeployError": "lite3r.deploy.tensorrt.flavour",
    "TensorRTNotInstalledError": "lite3r.deploy.tensorrt.flavour",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
