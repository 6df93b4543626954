"""ONNX export: the SLA custom node with its model-local function body, FP8 Q/DQ, a dynamic frame axis.

Names are exported lazily so that ``import lite3r.exporter`` pulls in neither torch nor onnx.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExportError": "lite3r.exporter.export",
    "ExportReport": "lite3r.exporter.export",
    "export_onnx": "lite3r.exporter.export",
    "SLAExportError": "lite3r.exporter.sla_onnx",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lite3r.exporter' has no attribute {name!r}")
