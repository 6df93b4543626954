"""Parity of every artifact against the PyTorch models, on Polygraphy runners and its Comparator.

Exports are lazy so that ``import lite3r.parity`` stays cheap.
"""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "check": "lite3r.parity.comparison",
    "ParityResult": "lite3r.parity.comparison",
    "metrics_against_teacher": "lite3r.parity.comparison",
    "EXPORT_GATE": "lite3r.parity.gates",
    "EXPORT_GATES": "lite3r.parity.gates",
    "export_gate": "lite3r.parity.gates",
    "RECONSTRUCTION_GATE": "lite3r.parity.gates",
    "teacher_gate": "lite3r.parity.gates",
    "Gate": "lite3r.parity.gates",
    "Tolerance": "lite3r.parity.gates",
    "OUTPUT_NAMES": "lite3r.parity.gates",
    "TorchRunner": "lite3r.parity.runners",
    "feed_dicts": "lite3r.parity.runners",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
