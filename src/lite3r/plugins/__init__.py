"""TensorRT plugins: the SLA core kernel compiled ahead of time (Triton -> PTX) and its TensorRT registration.

Exports are lazy: importing ``lite3r.plugins`` needs neither Triton nor TensorRT.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compile_sla_kernel": "lite3r.plugins.sla_kernel",
    "register_sla_plugin": "lite3r.plugins.tensorrt_sla",
    "PLUGIN_ID": "lite3r.plugins.tensorrt_sla",
    "CompiledKernel": "lite3r.plugins.triton_aot",
    "KernelAbiError": "lite3r.plugins.triton_aot",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lite3r.plugins' has no attribute {name!r}")
