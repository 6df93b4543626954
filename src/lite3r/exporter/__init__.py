"""ONNX export: the SLA custom node with its model-local function body, FP8 Q/DQ, a dynamic frame axis.

Names are exported lazily so that ``import lite3r.exporter`` pulls in neither torch nor onnx.
"""

from __future__ import annotations

from lite3r._lazy import lazy_exports

# What an export computes in (weights and activations); export.PRECISIONS maps them to torch dtypes.
PRECISION_NAMES = ("fp32", "bf16", "fp16")
# Model metadata (metadata_props) an export carries: its precision, and how TensorRT can run its SLA cores
# ("plugin", or "function body (<why not the plugin>)"; only with SLA nodes).
PRECISION_KEY = "lite3r.precision"
SLA_CORE_KEY = "lite3r.sla_core"

_EXPORTS = {
    "ExportError": "lite3r.exporter.export",
    "ExportReport": "lite3r.exporter.export",
    "export_onnx": "lite3r.exporter.export",
    "graph_precision": "lite3r.exporter.export",
    "PRECISIONS": "lite3r.exporter.export",
    "precision_of": "lite3r.exporter.export",
    "SLAExportError": "lite3r.exporter.sla_onnx",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
