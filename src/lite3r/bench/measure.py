"""Timing and memory measurement: the one implementation every benchmark uses.

Latency: CUDA events around each call on a GPU (``perf_counter`` on the CPU), after ``warmup`` untimed calls,
each timed call synchronised so that calls never overlap; min / median / max of the timed calls.
Memory: peak bytes allocated (and reserved) by PyTorch's CUDA allocator since the last reset.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lite3r._timing import timed_seconds  # noqa: F401 - part of this module's API


@dataclass(frozen=True)
class Timing:
    reps: int
    min_ms: float
    median_ms: float
    max_ms: float


def time_call(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 1) -> Timing:
    """Time ``fn()`` ``reps`` times after ``warmup`` untimed calls."""
    if reps < 1:
        raise ValueError(f"reps must be at least 1; got {reps}")
    for _ in range(warmup):
        fn()
    times = []
    cuda = device.type == "cuda"
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return Timing(reps, min(times), statistics.median(times), max(times))


def reset_memory(device: torch.device) -> None:
    """Free what Python no longer references and start a new peak-memory window."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) GiB since the last :func:`reset_memory`; ``(None, None)`` off CUDA."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30


def write_results(path: str | os.PathLike | None, **fields: object) -> None:
    """A benchmark script's JSON record at ``path`` (nothing without one): the device and torch version, then
    ``fields``."""
    if path is None:
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    Path(path).write_text(json.dumps({"device": device, "torch": torch.__version__, **fields}, indent=1))
