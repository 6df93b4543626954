"""lite3r: fast, small feed-forward 3D reconstruction transformers for deployment.

The public API is re-exported here lazily so that ``import lite3r`` stays cheap (no torch import until
a function is used).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "lite3r.models",
    "list_models": "lite3r.models",
    "convert_to_sla": "lite3r.sla",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lite3r' has no attribute {name!r}")
