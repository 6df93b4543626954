"""The documented FP8 case, run as documented: ``lite3r-export vggt-tiny --fp8 --synthetic 1 --target onnx``.

Its held-out scene 1001 used to fail the export gate on ``pose_enc`` (an e4m3 rounding flip); it must pass, and on
20 further held-out scenes. The same run shows that a rerun into a used folder removes what the earlier run wrote
and this one did not (an old engine), keeps the user's files, and that Ctrl-C in the middle of a real export
leaves the folder as it was.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

import lite3r
from lite3r.cli import export_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "out"
    out.mkdir()
    (out / "model.engine").write_text("an engine of an earlier run")
    (out / "my_notes.txt").write_text("the user's")
    (out / ".lite3r-manifest.json").write_text(json.dumps({"writers": {"lite3r-export": ["model.engine"]}}))
    result = CliRunner().invoke(export_main, ["vggt-tiny", "--fp8", "--synthetic", "1", "--target", "onnx",
                                              "--out", str(out)])  # fmt: skip
    return out, result


def test_documented_command_passes_the_export_gate(documented):
    out, result = documented
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity.json").read_text())
    export = next(c for c in report["comparisons"] if c["gate"] == "export")
    assert export["passed"] and report["frame_counts"] == [2, 8]


def test_rerun_removes_the_earlier_runs_engine_and_keeps_user_files(documented):
    out, _ = documented
    assert not (out / "model.engine").exists()
    assert (out / "my_notes.txt").read_text() == "the user's"
    statuses = {a["name"]: a["status"] for a in json.loads((out / "parity.json").read_text())["artifacts"]}
    assert "model.engine" not in statuses and "my_notes.txt" not in statuses  # the run's artifacts only


def test_held_out_scene_1001_and_20_further_seeds_pass(documented):
    from lite3r.data.synthetic import make_scene
    from lite3r.distill import load_student
    from lite3r.parity import check

    out, _ = documented
    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-tiny")
    student = load_student(teacher, out)
    seeds = [1001, *range(1002, 1022)]
    scenes = [make_scene(2, 112, 112, seed=s).images for s in seeds]
    result = check(out / "seeds", scenes, student=student, onnx_path=out / "model.onnx")
    assert result.passed, result.failures()
    pose = next(o for o in result.comparisons[0].outputs if o.name == "pose_enc")
    assert pose.absdiff["max"] > 1e-3  # the FP8 flips are there; the student's own noise floor bounds them
    assert pose.absdiff["max"] <= pose.atol_used


def test_ctrl_c_during_a_real_export_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("an earlier export")
    command = [sys.executable, "-c", "from lite3r.cli import export_main; export_main()", "vggt-tiny", "--fp8",
               "--size", "28x28", "--frames", "2", "--synthetic", "1", "--target", "onnx",
               "--out", str(out)]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob(".lite3r-stage-*/student.safetensors")):
        assert child.poll() is None, child.stderr.read()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)  # the student is saved, the ONNX export is running
    _, err = child.communicate(timeout=300)
    assert child.returncode != 0 and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["model.onnx"]
    assert (out / "model.onnx").read_text() == "an earlier export"
