"""The TensorRT runtime: engines built from lite3r's ONNX export (datacenter TensorRT or TensorRT-RTX), the SLA
plugin registered where the flavour has Python plugins, and how each custom node resolved."""

from __future__ import annotations

from lite3r.deploy.tensorrt.engine import BuildReport, EngineFromOnnx, build_engine
from lite3r.deploy.tensorrt.flavour import DeployError, TensorRTNotInstalledError

__all__ = ["BuildReport", "DeployError", "EngineFromOnnx", "TensorRTNotInstalledError", "build_engine"]
