"""``lite3r bench --smoke`` end to end (schema, tables, plots) and the grid's handling of OOM and unrunnable
variants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from lite3r.bench import BenchConfig, run_bench, write_report
from lite3r.bench import variants as variants_module
from lite3r.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CELL_KEYS = {"variant", "height", "width", "frames", "status"}
TIMED_KEYS = {"reps", "min_ms", "median_ms", "max_ms", "peak_allocated_gib", "peak_reserved_gib", "setup_s"}


def test_smoke_cli_writes_schema_tables_and_plots(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", "--smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "bench.json").read_text())
    assert set(record) == {"meta", "variants", "cells"}
    assert {"date", "device", "host", "command", "config", "versions", "git"} <= set(record["meta"])
    assert f"(host: {record['meta']['host']})" in (out / "bench.md").read_text()
    assert isinstance(record["meta"]["command"], str) and record["meta"]["config"]["reps"] == 3
    assert list(record["variants"]) == list(variants_module.VARIANTS)
    assert len(record["cells"]) == len(variants_module.VARIANTS) * 2  # two frame counts
    for cell in record["cells"]:
        assert CELL_KEYS <= set(cell)
        if cell["status"] == "ok":
            assert TIMED_KEYS <= set(cell) and cell["reps"] == 3
            assert 0 < cell["min_ms"] <= cell["median_ms"] <= cell["max_ms"]
    ran = {c["variant"] for c in record["cells"] if c["status"] == "ok"}
    assert ran == {"teacher-official", "teacher-fast", "student-bf16", "student-fp8"}
    pt2 = record["variants"]["pt2"]
    assert pt2["status"] == "not run" and "model.pt2" in pt2["reason"]
    for name in ("student-bf16", "student-fp8"):
        accuracy = record["variants"][name]["accuracy"]
        assert accuracy["status"] == "ok" and 0 <= accuracy["depth_abs_rel"] < 0.05
    for name in ("latency.png", "memory.png", "speedup.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "bench.md").read_text()
    assert "| 4 |" in table and "not run" in table


def test_da3_runs_through_the_same_variants():
    variants = ("teacher-official", "teacher-fast", "student-bf16", "student-fp8")
    config = BenchConfig.smoke(model="da3-tiny", variants=variants, grid=(((56, 56), (2, 3)),), reps=1, warmup=0)
    result = run_bench(config)
    assert {(c["variant"], c["frames"]): c["status"] for c in result.cells} == {
        (v, frames): "ok" for v in variants for frames in (2, 3)
    }
    assert result.variants["teacher-official"]["notes"] == "float32 weights, bf16 autocast, eager"
    for name in ("student-bf16", "student-fp8"):
        accuracy = result.variants[name]["accuracy"]
        assert accuracy["status"] == "ok" and 0 <= accuracy["depth_abs_rel"] < 0.05, accuracy


def test_out_of_memory_is_recorded_and_the_grid_goes_on(monkeypatch):
    real_build = variants_module._BUILDERS["student-bf16"]

    def build_that_runs_out_of_memory(ctx):
        built = real_build(ctx)
        run = built.run

        def run_or_oom(images):
            if images.shape[1] >= 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return run(images)

        built.run = run_or_oom
        return built

    monkeypatch.setitem(variants_module._BUILDERS, "student-bf16", build_that_runs_out_of_memory)
    config = BenchConfig.smoke(variants=("student-bf16", "teacher-fast"), grid=(((28, 28), (2, 3, 4)),), reps=1,
                               warmup=0, accuracy_scenes=0)  # fmt: skip
    seen = []
    result = run_bench(config, on_progress=lambda done, total, text: seen.append((done, total)))
    status = {(c["variant"], c["frames"]): c["status"] for c in result.cells}
    assert status == {
        ("student-bf16", 2): "ok", ("student-bf16", 3): "oom", ("student-bf16", 4): "skipped",
        ("teacher-fast", 2): "ok", ("teacher-fast", 3): "ok", ("teacher-fast", 4): "ok",
    }  # fmt: skip
    oom = next(c for c in result.cells if c["status"] == "oom")
    assert "out of memory" in oom["reason"]
    assert seen[-1] == (6, 6) and not result.errors


@pytest.mark.parametrize("console", ["kept", "gone"])
def test_sigterm_mid_grid_writes_the_cells_measured_so_far(tmp_path, console):
    """A GPU run stopped by its time limit (SIGTERM) keeps a report: the measured cells, the rest "not run". Also
    when the console's reader died first (``... 2>&1 | tee log`` under ``timeout``: tee gets the signal too)."""
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "lite3r.cli", "bench", "--smoke", "--variants", "teacher-fast,student-bf16",
               "--accuracy-scenes", "0", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = next(line for line in run.stdout if line.startswith('{"variant"'))  # one cell measured
        if console == "gone":
            run.stdout.close()
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=300)[0] if console == "kept" else run.wait(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, output
    if console == "kept":
        assert "stopped by SIGTERM" in output, output
    record = json.loads((out / "bench.json").read_text())
    assert record["meta"]["interrupted"] is True
    status = [(c["variant"], c["frames"], c["status"]) for c in record["cells"]]
    assert len(status) == 4 and status[0] == ("teacher-fast", 2, "ok") and json.loads(first)["status"] == "ok"
    assert status[-1] == ("student-bf16", 4, "not run")
    assert record["cells"][-1]["reason"] == "interrupted before this cell ran"
    assert "Interrupted" in (out / "bench.md").read_text() and (out / "latency.png").exists()


def test_bench_report_merges_runs_into_one_grid(tmp_path):
    """A grid measured over several calls becomes one report: the union of cells, the later run's numbers where
    both measured a cell, each cell naming its run; other models or devices are refused in one line."""
    quick = dict(reps=1, warmup=0, accuracy_scenes=0)
    first = run_bench(BenchConfig.smoke(variants=("teacher-fast",), grid=(((28, 28), (2,)),), **quick))
    second = run_bench(BenchConfig.smoke(variants=("teacher-fast", "student-bf16"), grid=(((28, 28), (2, 3)),),
                                         **quick))  # fmt: skip
    first.meta["git"] = "abc1234"  # a bench.json from before the revision carried its local-changes flag
    second.meta["git"] = {"revision": "0123456789abcdef", "dirty": True}
    write_report(first, tmp_path / "a")
    write_report(second, tmp_path / "b")
    out = tmp_path / "merged"
    result = CliRunner().invoke(main, ["bench-report", str(tmp_path / "a"), str(tmp_path / "b" / "bench.json"),
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "bench.json").read_text())
    runs = {(c["variant"], c["frames"]): (c["status"], c["run"]) for c in record["cells"]}
    assert runs == {("teacher-fast", 2): ("ok", 1), ("teacher-fast", 3): ("ok", 1),
                    ("student-bf16", 2): ("ok", 1), ("student-bf16", 3): ("ok", 1)}  # fmt: skip
    merged_median = next(c["median_ms"] for c in record["cells"] if c["variant"] == "teacher-fast" and c["frames"] == 2)
    assert merged_median == next(c["median_ms"] for c in second.cells if c["frames"] == 2)
    assert record["meta"]["config"]["grid"] == [[[28, 28], [2, 3]]] and len(record["meta"]["runs"]) == 2
    report = (out / "bench.md").read_text()
    assert "Merged from 2 runs" in report and (out / "speedup.png").exists()
    assert report.count(" · run 1 |") == 4 and " · run 0" not in report
    assert "git abc1234," in report and "git 0123456 with local changes," in report

    other = run_bench(BenchConfig.smoke(model="da3-tiny", variants=("teacher-fast",), grid=(((28, 28), (2,)),),
                                        **quick))  # fmt: skip
    write_report(other, tmp_path / "da3")
    result = CliRunner().invoke(main, ["bench-report", str(tmp_path / "a"), str(tmp_path / "da3"), "--out",
                                       str(tmp_path / "bad")])  # fmt: skip
    assert result.exit_code == 1 and "runs of different models cannot share one table" in result.output
    (tmp_path / "junk.json").write_text("{}")
    result = CliRunner().invoke(main, ["bench-report", str(tmp_path / "junk.json"), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "is not a lite3r bench.json" in result.output
    assert not (tmp_path / "bad").exists()


def test_bad_bench_options_fail_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--variants", "student-int4", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown variant(s) student-int4" in result.output
    result = CliRunner().invoke(main, ["bench", "--frames", "2,x", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "comma-separated list of positive counts" in result.output
    result = CliRunner().invoke(main, ["bench", "--device", "cuda:0", "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        assert result.exit_code == 1 and "CUDA is not available" in result.output


def test_fp8_calibration_scenes_stay_short_whatever_the_grid():
    """ModelOpt calibrates eagerly: a grid of long sequences must not calibrate on them (two 200-frame scenes of
    VGGT-1B kept the FP8 variant building for minutes on the H200); the smallest count, at most 8 frames."""
    import lite3r
    from lite3r.bench.run import CALIBRATION_FRAMES, _context

    teacher = lite3r.load_model("vggt-tiny")
    for counts, views in (((12, 20), CALIBRATION_FRAMES), ((3, 20), 3)):
        config = BenchConfig.smoke(grid=(((28, 28), counts),))
        scenes = _context(config, teacher, torch.device("cpu")).calibration_scenes()
        assert [tuple(s.shape) for s in scenes] == [(views, 3, 28, 28)] * 2


def test_benchmark_scripts_record_device_torch_and_their_fields(tmp_path):
    from lite3r.bench.measure import write_results

    write_results(tmp_path / "rows.json", rows=[{"frames": 8, "ms": 1.5}], args={"reps": 3})
    record = json.loads((tmp_path / "rows.json").read_text())
    assert record == {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                      "torch": torch.__version__, "rows": [{"frames": 8, "ms": 1.5}], "args": {"reps": 3}}
    write_results(None, rows=[])  # no path: nothing written, no error
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]
