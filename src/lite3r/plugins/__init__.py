"""TensorRT plugins: the SLA core kernel compiled ahead of time (Triton -> PTX) and its TensorRT registration.

Exports are lazy: importing ``lite3r.plugins`` needs neither Triton nor TensorRT.
"""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "compile_sla_kernel": "lite3r.plugins.sla_kernel",
    "register_sla_plugin": "lite3r.plugins.tensorrt_sla",
    "PLUGIN_ID": "lite3r.plugins.tensorrt_sla",
    "CompiledKernel": "lite3r.plugins.triton_aot",
    "KernelAbiError": "lite3r.plugins.triton_aot",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
