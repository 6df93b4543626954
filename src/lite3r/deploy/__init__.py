"""Deployment runtimes; names are exported lazily so that ``import lite3r.deploy`` pulls in nothing heavy."""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "FP8Linear": "lite3r.deploy.fp8",
    "FP8UnsupportedError": "lite3r.deploy.fp8",
    "check_fp8_device": "lite3r.deploy.fp8",
    "convert_to_fp8": "lite3r.deploy.fp8",
    "BuildReport": "lite3r.deploy.engine",
    "EngineFromOnnx": "lite3r.deploy.engine",
    "build_engine": "lite3r.deploy.engine",
    "parse_frames": "lite3r.deploy.engine",
    "DeployError": "lite3r.deploy._trt",
    "TensorRTNotInstalledError": "lite3r.deploy._trt",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
