"""``lite3r bench``: latency, memory and accuracy of the teacher and its students across frame counts."""

from __future__ import annotations

from lite3r._lazy import lazy_exports

_EXPORTS = {
    "BenchConfig": "lite3r.bench.run",
    "BenchResult": "lite3r.bench.run",
    "BenchInterrupted": "lite3r.bench.run",
    "run_bench": "lite3r.bench.run",
    "write_report": "lite3r.bench.report",
    "VARIANTS": "lite3r.bench.variants",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
