"""``run_bench``: every variant over a grid of view sizes and frame counts, in one process, on the same inputs.

Per variant: build it (teacher and student are never resident together: each variant is built, measured and
freed before the next), then for each grid cell one untimed first call (compilation / graph capture: its
seconds are the cell's setup), ``warmup`` more untimed calls and ``reps`` timed calls, with the peak memory
of the whole cell. Out-of-memory is recorded as such and the grid goes on (larger frame counts of the same
variant and size are skipped). Students are then scored against the float32 teacher on synthetic scenes.
An interrupt (Ctrl-C, or SIGTERM through the CLI) ends the grid with :class:`BenchInterrupted`, which carries
the result so far: the measured cells, and every other cell as "not run" (a long GPU run that hits its time
limit still leaves a report).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lite3r._io import json_ready
from lite3r._record import git_revision
from lite3r.bench import measure
from lite3r.bench.variants import VARIANTS, Built, Context, NotRunnable, build
from lite3r.deploy.torch import RuntimeOptions
from lite3r.models import ModelFamily

Grid = tuple[tuple[tuple[int, int], tuple[int, ...]], ...]  # ((height, width), frame counts) per view size
MIN_REPS = 3
CALIBRATION_FRAMES = 8  # the most views per FP8 calibration scene (see _context)


@dataclass(frozen=True)
class BenchConfig:
    model: str = "vggt"
    checkpoint: Path | None = None
    student: Path | None = None  # a distilled student folder (student.safetensors [+ quant_state.json])
    pt2: Path | None = None
    grid: Grid = (((518, 518), (2, 8, 32, 100, 200)),)
    variants: tuple[str, ...] = VARIANTS
    reps: int = 10
    warmup: int = 1
    max_cell_seconds: float | None = None  # cap a cell's timed runs (never below MIN_REPS) to this budget
    kh: float = 0.05
    kl: float = 0.10
    accuracy_scenes: int = 2
    accuracy_frames: int = 8
    device: str = "cuda"
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if self.reps < 1 or self.warmup < 0:
            raise ValueError(f"reps must be >= 1 and warmup >= 0; got {self.reps}, {self.warmup}")
        for (height, width), frames in self.grid:
            if height % 14 or width % 14 or height <= 0 or width <= 0:
                raise ValueError(f"view size {height}x{width} must be positive multiples of 14")
            if not frames or min(frames) < 1:
                raise ValueError(f"frame counts must be positive; got {frames} for {height}x{width}")

    @classmethod
    def smoke(cls, **overrides: Any) -> BenchConfig:
        """The same code on the CPU: vggt-tiny, two frame counts of 56x56, no compile, no CUDA graphs."""
        defaults = dict(
            model="vggt-tiny", grid=(((56, 56), (2, 4)),), device="cpu", accuracy_frames=2, accuracy_scenes=1,
            reps=3, warmup=1,
            runtime=RuntimeOptions(compile=False, cuda_graphs=False, dense_below=0),  # 56² views: SLA, not dense
        )
        return cls(**{**defaults, **overrides})


@dataclass
class BenchResult:
    meta: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    cells: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (non-finite numbers, e.g. pose errors of a one-view scene, become null)."""
        return json_ready({"meta": self.meta, "variants": self.variants, "cells": self.cells})

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["status"] == "error"]


class BenchInterrupted(KeyboardInterrupt):
    """The grid was interrupted; ``result`` holds what was measured before (``meta["interrupted"]`` is true)."""

    def __init__(self, result: BenchResult) -> None:
        super().__init__("lite3r bench interrupted")
        self.result = result


Progress = Callable[[int, int, str], None]
INTERRUPTED = "interrupted before this cell ran"


def run_bench(
    config: BenchConfig,
    *,
    on_progress: Progress | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    command: str | None = None,
) -> BenchResult:
    """Run the grid; see the module docstring. Writes nothing (:func:`lite3r.bench.report.write_report` does);
    ``on_cell`` sees every cell as soon as it is measured (a long GPU run's log keeps what finished)."""
    import lite3r
    from lite3r.predict import resolve_device

    device = resolve_device(config.device)
    progress = on_progress or (lambda done, total, text: None)
    torch.manual_seed(config.seed)
    teacher = lite3r.load_model(config.model, checkpoint=config.checkpoint).eval()
    ctx = _context(config, teacher, device)
    scenes = _accuracy_scenes(config)
    reference = _float32_reference(teacher, scenes, device)

    grid = _GridRun(config, ctx, scenes, reference, device, progress, on_cell)
    try:
        for name in config.variants:
            grid.run_variant(name)
    except KeyboardInterrupt as e:
        done = {(c["variant"], c["height"], c["width"], c["frames"]) for c in grid.cells}
        for name in config.variants:
            grid.variants.setdefault(name, {"status": "not run", "reason": INTERRUPTED})
            grid.cells += [_cell(name, size, frames, "not run", reason=INTERRUPTED)
                           for size, frames in _cells(config) if (name, *size, frames) not in done]  # fmt: skip
        measure.reset_memory(device)
        meta = _meta(config, device, command) | {"interrupted": True}
        raise BenchInterrupted(BenchResult(meta, grid.variants, grid.cells)) from e
    progress(grid.total, grid.total, "done")
    return BenchResult(_meta(config, device, command), grid.variants, grid.cells)


@dataclass
class _GridRun:
    """The grid's state while it runs: cells and variant records grow as each variant is measured."""

    config: BenchConfig
    ctx: Context
    scenes: list[Any]
    reference: Any
    device: torch.device
    progress: Progress
    on_cell: Callable[[dict[str, Any]], None] | None
    cells: list[dict[str, Any]] = field(default_factory=list)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.config.variants) * sum(len(frames) for _, frames in self.config.grid)

    def run_variant(self, name: str) -> None:
        """Build one variant, measure its cells (each appended as it finishes), score it, free it."""
        config, device, cells = self.config, self.device, self.cells
        self.progress(len(cells), self.total, f"{name}: building")
        measure.reset_memory(device)
        record = self.variants[name] = {"status": "ok"}
        try:
            built, record["build_s"] = measure.timed_seconds(lambda: build(name, self.ctx), device)
            record["notes"] = built.notes
        except (NotRunnable, torch.OutOfMemoryError) as e:
            status = "oom" if isinstance(e, torch.OutOfMemoryError) else "not run"
            record |= {"status": status, "reason": _one_line(e)}
            cells += [_cell(name, size, frames, status, reason=record["reason"]) for size, frames in _cells(config)]
            self.progress(len(cells), self.total, f"{name}: {status}")
            return
        try:
            for (height, width), frame_counts in config.grid:
                ran_out_at = None
                for frames in frame_counts:
                    self.progress(len(cells), self.total, f"{name}: {frames} frames of {height}x{width}")
                    if ran_out_at is not None:
                        cells.append(_cell(name, (height, width), frames, "skipped",
                                           reason=f"ran out of memory at {ran_out_at} frames"))  # fmt: skip
                        continue
                    cell = _measure_cell(name, built, config, (height, width), frames, device)
                    ran_out_at = frames if cell["status"] == "oom" else None
                    cells.append(cell)
                    if self.on_cell is not None:
                        self.on_cell(cell)
            if self.scenes and any(c["status"] == "ok" for c in cells if c["variant"] == name):
                record["accuracy"] = _accuracy(built, self.scenes, self.reference, device, self.ctx.teacher.family)
        finally:
            built.release()
            del built
            measure.reset_memory(device)


def _context(config: BenchConfig, teacher: torch.nn.Module, device: torch.device) -> Context:
    import lite3r

    quant_state = None
    if config.student is not None:
        from lite3r.calibration.state import read_quant_state

        path = Path(config.student) / "quant_state.json"
        quant_state = read_quant_state(path) if path.exists() else None

    def make_student() -> torch.nn.Module:
        if config.student is not None:
            from lite3r.distill import load_student

            return load_student(teacher, config.student, fp8=False)  # a new copy
        return lite3r.convert_to_sla(teacher, layers="global", kh=config.kh, kl=config.kl)

    def calibration_scenes() -> list[torch.Tensor]:
        """Two scenes of the smallest frame count, at most 8: ModelOpt's fake-quant calibration is eager, and two
        200-frame scenes of VGGT-1B kept ``--frames 200 --variants student-fp8`` building for minutes (H200)."""
        from lite3r.data.synthetic import make_scene

        (height, width), frames = config.grid[0]
        views = min(*frames, CALIBRATION_FRAMES)
        return [make_scene(views, height, width, seed=config.seed + 3000 + i).images for i in range(2)]

    return Context(teacher, device, config.runtime, make_student, calibration_scenes, quant_state, config.pt2)


def _cells(config: BenchConfig):
    return [(size, frames) for size, counts in config.grid for frames in counts]


def _cell(variant: str, size: tuple[int, int], frames: int, status: str, **values: Any) -> dict[str, Any]:
    return {"variant": variant, "height": size[0], "width": size[1], "frames": frames, "status": status, **values}


def _inputs(frames: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Random views in [0, 1] (never zeros: they can run faster than real data), the same for every variant."""
    generator = torch.Generator().manual_seed(seed + 7919 * frames + size[0] * 31 + size[1])
    return torch.rand(1, frames, 3, *size, generator=generator)


def _measure_cell(
    name: str, built: Built, config: BenchConfig, size: tuple[int, int], frames: int, device: torch.device
) -> dict[str, Any]:
    images = None
    try:
        measure.reset_memory(device)
        images = _inputs(frames, size, config.seed).to(device)
        _, setup_s = measure.timed_seconds(lambda: built.run(images), device)
        call_s = setup_s
        for _ in range(config.warmup):
            _, call_s = measure.timed_seconds(lambda: built.run(images), device)
        timing = measure.time_call(lambda: built.run(images), _reps(config, call_s), device, warmup=0)
        allocated, reserved = measure.peak_memory_gib(device)
        return _cell(name, size, frames, "ok", **asdict(timing), peak_allocated_gib=allocated,
                     peak_reserved_gib=reserved, setup_s=setup_s, **built.setup((1, frames, 3, *size)))  # fmt: skip
    except torch.OutOfMemoryError as e:
        return _cell(name, size, frames, "oom", reason=_one_line(e))
    except Exception as e:  # noqa: BLE001 - one broken cell must not lose the rest of a long GPU run
        return _cell(name, size, frames, "error", reason=f"{type(e).__name__}: {_one_line(e)}")
    finally:
        del images
        measure.reset_memory(device)


def _reps(config: BenchConfig, call_s: float) -> int:
    """``config.reps``, or fewer (at least ``MIN_REPS``) when they would not fit in ``max_cell_seconds``."""
    if config.max_cell_seconds is None or call_s * config.reps <= config.max_cell_seconds:
        return config.reps
    return max(MIN_REPS, int(config.max_cell_seconds / call_s))


def _accuracy_scenes(config: BenchConfig) -> list[Any]:
    if config.accuracy_scenes < 1:
        return []
    from lite3r.data.synthetic import make_scene

    (height, width), _ = config.grid[0]
    return [
        make_scene(config.accuracy_frames, height, width, seed=config.seed + 2000 + i)
        for i in range(config.accuracy_scenes)
    ]


@contextlib.contextmanager
def _full_float32():
    """No TF32 anywhere: the reference is the float32 model, not its tensor-core approximation."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def _float32_reference(teacher: torch.nn.Module, scenes: list[Any], device: torch.device) -> list[dict]:
    if not scenes:
        return []
    model = copy.deepcopy(teacher).to(device)
    with _full_float32():
        outputs = [{k: v.cpu() for k, v in model(scene.images.to(device)).items()} for scene in scenes]
    del model
    measure.reset_memory(device)
    return outputs


def _accuracy(
    built: Built, scenes: list[Any], reference: list[dict], device: torch.device, family: ModelFamily
) -> dict[str, Any]:
    """Mean over scenes of the output gap to the float32 teacher (``lite3r.metrics.prediction_gap``)."""
    from lite3r.metrics import prediction_gap

    totals: dict[str, float] = {}
    try:
        for scene, ref in zip(scenes, reference):
            out = built.run(scene.images[None].to(device))
            for key, value in prediction_gap(out, ref, scene.images.shape[-2:], family).items():
                totals[key] = totals.get(key, 0.0) + value / len(scenes)
    except Exception as e:  # noqa: BLE001 - reported in the record, never a crash after the timings
        return {"status": "error", "reason": f"{type(e).__name__}: {_one_line(e)}"}
    views = scenes[0].images.shape
    return {"status": "ok", "scenes": len(scenes), "views": views[0], "height": views[2], "width": views[3], **totals}


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _host() -> str:
    """The host CPU (model name from /proc/cpuinfo where there is one) and its logical core count."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} logical cores"


def _meta(config: BenchConfig, device: torch.device, command: str | None) -> dict[str, Any]:
    from lite3r import __version__

    versions = {"lite3r": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for module in ("triton", "modelopt"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    config_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "device_type": device.type,
        "host": _host(),  # the eager teacher at few frames is launch bound: its latency follows this CPU
        "command": command or " ".join(sys.argv),
        "config": config_json,
        "versions": versions,
        "git": git_revision(),  # {"revision", "dirty"}: a run from a changed tree says so
    }


