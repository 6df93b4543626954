"""ONNX export: the SLA custom node with its model-local function body, FP8 Q/DQ, a dynamic frame axis.

Names are exported lazily so that ``import lite3r.exporter`` pulls in neither torch nor onnx.
"""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "ExportError": "lite3r.exporter.export",
    "ExportReport": "lite3r.exporter.export",
    "export_onnx": "lite3r.exporter.export",
    "SLAExportError": "lite3r.exporter.sla_onnx",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
