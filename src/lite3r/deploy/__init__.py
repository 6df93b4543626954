"""Deployment runtimes; names are exported lazily so that ``import lite3r.deploy`` pulls in nothing heavy."""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "FP8Linear": "lite3r.deploy.torch.fp8",
    "FP8UnsupportedError": "lite3r.deploy.torch.fp8",
    "check_fp8_device": "lite3r.deploy.torch.fp8",
    "convert_to_fp8": "lite3r.deploy.torch.fp8",
    "BuildReport": "lite3r.deploy.tensorrt.engine",
    "EngineFromOnnx": "lite3r.deploy.tensorrt.engine",
    "build_engine": "lite3r.deploy.tensorrt.engine",
    "parse_frames": "lite3r.deploy.frames",
    "DeployError": "lite3r.deploy.tensorrt.flavour",
    "TensorRTNotInstalledError": "lite3r.deploy.tensorrt.flavour",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
