"""lite3r: fast, small feed-forward 3D reconstruction transformers for deployment.

The public API is re-exported here lazily so that ``import lite3r`` stays cheap (no torch import until
a function is used).
"""

from __future__ import annotations

from lite3r._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "lite3r.models",
    "list_models": "lite3r.models",
    "convert_to_sla": "lite3r.sla",
}

__getattr__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = [*_names, "__version__"]
