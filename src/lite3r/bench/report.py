"""What ``lite3r bench`` writes: ``bench.json`` (everything), ``bench.md`` (tables with speedups against both
teacher variants), and three plots (latency and peak memory against frames, log scales; speedup against frames).

:func:`merge_results` joins the ``bench.json`` of several runs of one model on one device (a full grid on a
machine lent in 10-minute calls is several runs) into one report, each cell naming the run it came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lite3r._io import staged_output
from lite3r.bench.run import BenchResult
from lite3r.bench.variants import TEACHERS

PLOTS = ("latency.png", "memory.png", "speedup.png")
ACCURACY_KEYS = ("depth_abs_rel", "depth_delta_1_25", "rotation_error_deg", "translation_error_deg", "pose_enc_l1")


def write_report(result: BenchResult, out: str | Path) -> list[Path]:
    """Write ``bench.json``, ``bench.md`` and the plots into ``out``, all together or not at all."""
    with staged_output(out, writer="bench") as stage:
        (stage / "bench.json").write_text(json.dumps(result.to_json(), indent=1, allow_nan=False) + "\n")
        (stage / "bench.md").write_text(markdown(result))
        _plots(result, stage)
        names = sorted(p.name for p in stage.iterdir())
    return [Path(out) / name for name in names]


def read_result(path: str | Path) -> BenchResult:
    """A ``bench.json`` (or the folder holding one) as written by :func:`write_report`."""
    path = Path(path)
    path = path / "bench.json" if path.is_dir() else path
    try:
        record = json.loads(path.read_text())
        return BenchResult(record["meta"], record["variants"], record["cells"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a lite3r bench.json ({type(e).__name__}: {e})") from None


def merge_results(results: list[BenchResult]) -> BenchResult:
    """One result from runs of the same model on the same device: the union of their grids; where two runs
    measured the same cell, the later run's measurement wins over anything, and a measurement over a cell that
    did not run. Every cell gets ``run`` (its run's index in ``meta["runs"]``)."""
    if not results:
        raise ValueError("nothing to merge")
    devices = {r.meta["device"] for r in results}
    if len(devices) > 1:
        raise ValueError(f"runs on different devices cannot share one table: {', '.join(sorted(devices))}")
    models = {r.meta["config"]["model"] for r in results}
    if len(models) > 1:
        raise ValueError(f"runs of different models cannot share one table: {', '.join(sorted(models))}")
    cells: dict[tuple[str, int, int, int], dict[str, Any]] = {}
    variants: dict[str, dict[str, Any]] = {}
    sizes: dict[tuple[int, int], set[int]] = {}
    for index, result in enumerate(results):
        for cell in result.cells:
            key = _key(cell)
            if cell["status"] == "ok" or key not in cells or cells[key]["status"] != "ok":
                cells[key] = {**cell, "run": index}
        for name, record in result.variants.items():
            if record.get("status") == "ok" or variants.get(name, {}).get("status") != "ok":
                variants[name] = record
        for (height, width), frames in result.meta["config"]["grid"]:
            sizes.setdefault((height, width), set()).update(frames)
    first = results[0].meta
    runs = [{k: r.meta.get(k) for k in ("date", "command", "git", "versions", "interrupted")} for r in results]
    config = {**first["config"], "grid": [[list(size), sorted(frames)] for size, frames in sizes.items()]}
    meta = {k: v for k, v in first.items() if k != "interrupted"} | {"config": config, "runs": runs}
    order = {name: i for i, name in enumerate(variants)}
    ordered = sorted(cells.values(), key=lambda c: (order[c["variant"]], c["height"], c["width"], c["frames"]))
    return BenchResult(meta, variants, ordered)


def speedups(result: BenchResult) -> dict[tuple[str, int, int, int], dict[str, float]]:
    """``(variant, height, width, frames) -> {baseline: speedup}`` for every pair of cells that both ran."""
    ok = {_key(c): c for c in result.cells if c["status"] == "ok"}
    table = {}
    for key, cell in ok.items():
        variant, *where = key
        table[key] = {
            base: ok[(base, *where)]["median_ms"] / cell["median_ms"] for base in TEACHERS if (base, *where) in ok
        }
    return table


def _key(cell: dict[str, Any]) -> tuple[str, int, int, int]:
    return cell["variant"], cell["height"], cell["width"], cell["frames"]


def _sizes(result: BenchResult) -> Iterator[tuple[int, int, list[int]]]:
    for (height, width), frames in result.meta["config"]["grid"]:
        yield height, width, list(frames)


def git_text(git: dict[str, Any] | str | None) -> str:
    """A run's revision as the report prints it; bench.json files before 2026-11-30 (sixth session) hold a bare
    short hash, which never said whether the tree had local changes."""
    if not git:
        return "unknown"
    if isinstance(git, str):
        return git
    return git["revision"][:7] + (" with local changes" if git["dirty"] else "")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def cell_text(cell: dict[str, Any] | None) -> str:
    """A cell as one short string: the median time, or what happened instead."""
    if cell is None:
        return "–"
    if cell["status"] == "ok":
        return f"{cell['median_ms']:.1f}"
    return {"oom": "OOM", "skipped": "OOM↑", "not run": "not run", "error": "error"}[cell["status"]]


def markdown(result: BenchResult) -> str:
    meta = result.meta
    cells = {_key(c): c for c in result.cells}
    ups = speedups(result)
    names = list(result.variants)
    lines = [
        "# lite3r bench",
        "",
        f"- Date: {meta['date']}. Device: {meta['device']}"
        + (f" (host: {meta['host']})" if meta.get("host") else "") + ". Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f". git {git_text(meta['git'])}.",
        *([f"- Command: `{meta['command']}`"] if "runs" not in meta else
          [f"- Merged from {len(meta['runs'])} runs (each latency cell ends with its run): "
           + "; ".join(f"run {i}: {run['date']}, git {git_text(run['git'])}, `{run['command']}`"
                       for i, run in enumerate(meta["runs"]))]),
        *([f"- **Interrupted** after {sum(c['status'] == 'ok' for c in result.cells)} of {len(result.cells)} cells: "
           "the others are \"not run\"."] if meta.get("interrupted") else []),
        f"- Model: {meta['config']['model']}, batch 1, {meta['config']['reps']} timed runs per cell "
        + (f"([n runs] where {meta['config']['max_cell_seconds']} s per cell allowed fewer) "
           if meta["config"]["max_cell_seconds"] else "")
        + "after "
        f"{meta['config']['warmup']} warm-up runs (and one first call, reported as setup); "
        f"{'CUDA events' if meta['device_type'] == 'cuda' else 'wall clock'}; "
        "median (min–max) ms. Peak memory: allocated by PyTorch during the cell, weights included.",
        "",
        "## Variants",
        "",
        "| variant | status | build s | how it runs |",
        "|---|---|---:|---|",
    ]
    for name, record in result.variants.items():
        how = record.get("notes") or record.get("reason", "")
        lines.append(f"| {name} | {record['status']} | {_fmt(record.get('build_s'))} | {how} |")
    for height, width, frames in _sizes(result):
        lines += ["", f"## {height}×{width}: latency, ms (speedup vs teacher-official / vs teacher-fast)", ""]
        lines += ["| frames | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for f in frames:
            row = []
            for name in names:
                cell = cells.get((name, height, width, f))
                text = cell_text(cell)
                if cell and cell["status"] == "ok":
                    text += f" ({cell['min_ms']:.1f}–{cell['max_ms']:.1f})"
                    if cell["reps"] != meta["config"]["reps"]:
                        text += f" [{cell['reps']} runs]"
                    up = ups.get((name, height, width, f), {})
                    if name not in TEACHERS and up:
                        text += " " + " / ".join(f"{up[b]:.2f}×" if b in up else "–" for b in TEACHERS)
                if cell and "run" in cell:
                    text += f" · run {cell['run']}"
                row.append(text)
            lines.append(f"| {f} | " + " | ".join(row) + " |")
        lines += ["", f"## {height}×{width}: peak memory allocated, GiB (setup s: first call incl. compile/capture)",
                  "", "| frames | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]  # fmt: skip
        for f in frames:
            row = []
            for name in names:
                cell = cells.get((name, height, width, f))
                if cell and cell["status"] == "ok":
                    row.append(f"{_fmt(cell.get('peak_allocated_gib'), 2)} ({cell['setup_s']:.1f} s)")
                else:
                    row.append(cell_text(cell))
            lines.append(f"| {f} | " + " | ".join(row) + " |")
    lines += ["", "## Accuracy vs the float32 teacher (synthetic scenes)", "",
              "| variant | scenes × views | " + " | ".join(ACCURACY_KEYS) + " |",
              "|---|---|" + "---:|" * len(ACCURACY_KEYS)]  # fmt: skip
    for name, record in result.variants.items():
        acc = record.get("accuracy")
        if acc is None:
            lines.append(f"| {name} | not run ({record.get('reason') or 'no cell ran'}) |" + " |" * len(ACCURACY_KEYS))
        elif acc["status"] != "ok":
            lines.append(f"| {name} | error: {acc['reason']} |" + " |" * len(ACCURACY_KEYS))
        else:
            values = " | ".join(f"{acc[k]:.3g}" for k in ACCURACY_KEYS)
            lines.append(f"| {name} | {acc['scenes']} × {acc['views']} ({acc['height']}×{acc['width']}) | {values} |")
    problems = [c for c in result.cells if c["status"] not in ("ok",)]
    if problems:
        lines += ["", "## Cells that did not run", ""]
        lines += [f"- {c['variant']}, {c['frames']} frames of {c['height']}×{c['width']}: {c['status']}"
                  + (f" ({c['reason']})" if c.get("reason") else "") for c in problems]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plots(result: BenchResult, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in result.cells if c["status"] == "ok"]
    ups = speedups(result)
    sizes = [(h, w) for h, w, _ in _sizes(result)]
    styles = ["-", "--", ":", "-."]
    panels = {
        "latency.png": ("median latency (ms)", lambda c: c["median_ms"], True),
        "memory.png": ("peak memory allocated (GiB)", lambda c: c.get("peak_allocated_gib"), True),
        "speedup.png": ("speedup vs teacher-official (×)", lambda c: ups[_key(c)].get("teacher-official"), False),
    }
    for filename, (label, value, log_y) in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in result.variants:
            for size, style in zip(sizes, styles):
                points = sorted((c["frames"], value(c)) for c in ok
                                if c["variant"] == name and (c["height"], c["width"]) == size)  # fmt: skip
                points = [(f, v) for f, v in points if v is not None]
                if points:
                    ax.plot(*zip(*points), style, marker="o", label=f"{name} {size[0]}×{size[1]}")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:
            ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.set_title(f"{result.meta['config']['model']} on {result.meta['device']}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)
