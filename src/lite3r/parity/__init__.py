"""Parity of every artifact against the PyTorch models, on Polygraphy runners and its Comparator.

Exports are lazy so that ``import lite3r.parity`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check": "lite3r.parity.comparison",
    "ParityResult": "lite3r.parity.comparison",
    "metrics_against_teacher": "lite3r.parity.comparison",
    "EXPORT_GATE": "lite3r.parity.gates",
    "RECONSTRUCTION_GATE": "lite3r.parity.gates",
    "Gate": "lite3r.parity.gates",
    "Tolerance": "lite3r.parity.gates",
    "OUTPUT_NAMES": "lite3r.parity.gates",
    "TorchRunner": "lite3r.parity.runners",
    "feed_dicts": "lite3r.parity.runners",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lite3r.parity' has no attribute {name!r}")
