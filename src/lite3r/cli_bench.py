"""``lite3r bench``: a click command over :mod:`lite3r.bench` (parse, call, print). ``lite3r.cli`` attaches it."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lite3r._click import one_line_errors, quiet_third_party


class _Console(Console):
    """A console whose reader went away (``... | tee log``, both stopped by ``timeout``) goes quiet instead of
    exiting, as rich's does: the bench keeps measuring and its report files are what count."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(OSError, ValueError):  # later writes (and the flush at exit) go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.file.fileno())


console = _Console(stderr=True)
out_console = _Console()


def _counts(text: str, option: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of positive counts", param_hint=option)
    return counts


def _grid(sizes: tuple[str, ...], frames: tuple[int, ...], default_size: tuple[int, int]):
    """``--size HxW`` (with the ``--frames`` counts) or ``--size HxW:F1,F2`` (its own counts), repeatable."""
    from lite3r.cli import _parse_size

    grid = []
    for text in sizes or (f"{default_size[0]}x{default_size[1]}",):
        size, _, counts = text.partition(":")
        grid.append((_parse_size(size), _counts(counts, "--size") if counts else frames))
    return tuple(grid)


@click.command("bench")
@click.option("--model", "model_name", default="vggt", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official teacher weights.")
@click.option("--student", "student_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Distilled student folder (student.safetensors [+ quant_state.json]); default: convert_to_sla.")
@click.option("--pt2", type=click.Path(dir_okay=False, path_type=Path), help="model.pt2 to time as variant pt2.")
@click.option("--frames", default="2,8,32,100,200", show_default=True, help="Frame counts, comma-separated.")
@click.option("--size", "sizes", multiple=True,
              help="View size HxW (repeatable); HxW:F1,F2 gives that size its own frame counts. Default: 518x518.")
@click.option("--variants", help="Comma-separated subset of teacher-official, teacher-fast, student-bf16, "
              "student-fp8, pt2 (default: all).")
@click.option("--reps", default=10, show_default=True, type=click.IntRange(min=1), help="Timed runs per cell.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0),
              help="Untimed runs per cell after the first call (which compiles / captures).")
@click.option("--max-cell-seconds", type=click.FloatRange(min=1),
              help="Time budget per cell: fewer timed runs (at least 3) where --reps would take longer.")
@click.option("--kh", default=0.05, show_default=True, help="SLA critical-block fraction of the student.")
@click.option("--kl", default=0.10, show_default=True, help="SLA negligible-block fraction of the student.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16"]), default="bfloat16", show_default=True,
              help="Weights of the runtime variants.")
@click.option("--heads-dtype", type=click.Choice(["bfloat16", "float16", "float32"]),
              help="Weights of the prediction heads in the runtime variants (default: --dtype).")
@click.option("--compile/--no-compile", "compile_blocks", default=True, show_default=True,
              help="Regional torch.compile of the transformer blocks and the DPT heads' per-chunk prediction.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True)
@click.option("--sdpa", type=click.Choice(["cudnn", "flash", "default"]), default="cudnn", show_default=True,
              help="Preferred dense-attention backend of the runtime variants.")
@click.option("--dense-below", type=click.IntRange(min=0), metavar="TOKENS",
              help="Students' SLA layers take exact attention on sequences shorter than this (0: never). Default: "
              "the runtime's (RuntimeOptions.dense_below: the measured dense/SLA crossover, docs/runtime.md).")
@click.option("--qk-codes", type=click.Choice(["int8", "fp8"]),
              help="Students' SLA layers score Q K^T with these 8-bit codes (RuntimeOptions.qk_codes; default: "
              "16 bits; measured slower on the H200, docs/runtime.md).")
@click.option("--fp8-fast-accum/--no-fp8-fast-accum", default=True, show_default=True,
              help="FP8 GEMMs of student-fp8 with Hopper's fast accumulation (RuntimeOptions.fp8_fast_accum).")
@click.option("--accuracy-scenes", default=2, show_default=True, type=click.IntRange(min=0),
              help="Synthetic scenes the variants are scored on against the float32 teacher (0: none).")
@click.option("--accuracy-frames", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cuda", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--smoke", is_flag=True, help="The same code on the CPU: vggt-tiny, 2 and 4 frames of 56x56, no "
              "compile or CUDA graphs, 3 timed runs (checks the tool, measures nothing of interest).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder.")
@one_line_errors
def bench_command(model_name, checkpoint, student_dir, pt2, frames, sizes, variants, reps, warmup, max_cell_seconds,
                  kh, kl, dtype, heads_dtype, compile_blocks, cuda_graphs, sdpa, dense_below, qk_codes, fp8_fast_accum,
                  accuracy_scenes, accuracy_frames, device, seed, smoke, out):
    """Latency, peak memory and accuracy of the teacher (official usage, fast runtime) and its SLA students
    over frame counts; writes bench.json, bench.md and plots."""
    quiet_third_party()
    from lite3r._io import check_writable_dir
    from lite3r.bench import BenchConfig, BenchInterrupted, run_bench, write_report
    from lite3r.bench.variants import VARIANTS
    from lite3r.deploy.torch import RuntimeOptions

    check_writable_dir(out)
    chosen = tuple(v.strip() for v in variants.split(",")) if variants else VARIANTS
    options = dict(
        checkpoint=checkpoint, student=student_dir, pt2=pt2, variants=chosen, kh=kh, kl=kl, seed=seed,
        accuracy_scenes=accuracy_scenes,
    )
    if smoke:
        config = BenchConfig.smoke(**options)
    else:
        counts = _counts(frames, "--frames")
        fallback = {} if dense_below is None else {"dense_below": dense_below}
        runtime = RuntimeOptions(dtype=dtype, heads_dtype=heads_dtype, compile=compile_blocks,
                                 cuda_graphs=cuda_graphs, sdpa=sdpa, qk_codes=qk_codes, fp8_fast_accum=fp8_fast_accum,
                                 **fallback)  # fmt: skip
        config = BenchConfig(
            model=model_name, grid=_grid(sizes, counts, (518, 518)), reps=reps, warmup=warmup, device=device,
            max_cell_seconds=max_cell_seconds,
            runtime=runtime, accuracy_frames=accuracy_frames, **options,
        )
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} cells"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("starting", total=None)

        def on_progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total, description=text)

        def on_cell(cell: dict) -> None:
            line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in cell.items()})
            bar.console.print(line, soft_wrap=True, highlight=False, markup=False)

        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        try:
            result, interrupted = run_bench(config, on_progress=on_progress, on_cell=on_cell, command=command), None
        except BenchInterrupted as stop:
            interrupted, written = stop, write_report(stop.result, out)  # files first, then the console
    if interrupted is not None:  # what was measured is written, then the interrupt goes on
        measured = sum(c["status"] == "ok" for c in interrupted.result.cells)
        _announce(interrupted.result, written)
        console.print(f"[yellow]interrupted: {measured} of {len(interrupted.result.cells)} cells measured[/]")
        raise interrupted.__cause__ or interrupted
    _announce(result, write_report(result, out))
    if result.errors:
        console.print(f"[red]{len(result.errors)} cell(s) failed: {result.errors[0]['reason']}[/]")
        sys.exit(1)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder.")
@one_line_errors
def bench_report_command(runs, out):
    """One report (bench.json, bench.md, plots) from the bench.json files (or their folders) of several
    `lite3r bench` runs of one model on one device; a cell measured twice keeps the later run's numbers."""
    from lite3r._io import check_writable_dir
    from lite3r.bench import write_report
    from lite3r.bench.report import merge_results, read_result

    check_writable_dir(out)
    merged = merge_results([read_result(path) for path in runs])
    _announce(merged, write_report(merged, out))


def _announce(result, written: list[Path]) -> None:
    out_console.print(_summary(result))
    for path in written:
        out_console.print(f"wrote {path}")


def _summary(result) -> Table:
    from lite3r.bench.report import cell_text, speedups

    table = Table(title=f"lite3r bench: median ms (speedup vs teacher-official) on {result.meta['device']}")
    table.add_column("size / frames")
    names = list(result.variants)
    for name in names:
        table.add_column(name, justify="right")
    cells = {(c["variant"], c["height"], c["width"], c["frames"]): c for c in result.cells}
    ups = speedups(result)
    for (height, width), counts in result.meta["config"]["grid"]:
        for frames in counts:
            row = []
            for name in names:
                key = (name, height, width, frames)
                text = cell_text(cells.get(key))
                up = ups.get(key, {}).get("teacher-official")
                row.append(text + (f" ({up:.2f}×)" if up and name != "teacher-official" else ""))
            table.add_row(f"{height}x{width} / {frames}", *row)
    return table
