"""The README's main job on the shipped vggt-small teacher: the student-vs-teacher gate is enforced and fails
today on the poses (issue 12, xfail with the numbers), and the same gate fails for a student whose proj_lin is
scrambled.

Needs the trained weights (package data, installed by scripts/install_teacher.py); skipped without them.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import lite3r
from lite3r.models import has_trained_weights, pretrained_weights

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pretrained_weights("vggt-small").is_file(), reason="vggt-small weights not installed"),
]


def _main_job_args() -> list[str]:
    """The ``lite3r-export`` arguments of the README's main job, without ``--out``."""
    main_job = re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    args = shlex.split(main_job.split("lite3r-export", 1)[1])
    out = args.index("--out")
    return args[:out] + args[out + 2 :]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lite3r.cli import export_main

    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(export_main, [*_main_job_args(), "--out", str(out)])
    return out, result


def test_readme_main_job_enforces_the_teacher_gate(demo):
    out, _ = demo
    report = json.loads((out / "parity.json").read_text())
    [gate] = [c for c in report["comparisons"] if c["gate"] == "reconstruction"]
    assert gate["enforced"], gate
    assert gate["metrics"]["depth_abs_rel"] < 0.05  # depth survives SLA at kh 5 %; the poses (below) do not


@pytest.mark.xfail(
    strict=True,
    reason="the shipped teacher (1541 steps, poses learned: 16.8 deg held-out rotation error) is read across views by "
    "its global attention; the SLA student at kh 5 % (camera and register tokens dense, proj_lin distilled by the "
    "job) moves its poses by 11.5 deg rotation / 11.2 deg translation (27 / 19 deg before the dense tokens; gate: "
    "2 / 5 deg); depth passes (AbsRel 0.047). The gap is real and open (issue 12; measured 2026-11-30, CPU, "
    "benchmarks/RESULTS.md).",
)
def test_readme_main_job_passes_the_teacher_gate(demo):
    out, _ = demo
    report = json.loads((out / "parity.json").read_text())
    [gate] = [c for c in report["comparisons"] if c["gate"] == "reconstruction"]
    assert gate["passed"], gate


@pytest.mark.xfail(
    strict=True,
    reason="the student fails the enforced teacher gate (test above), so the job exits 1; its bf16 ONNX also fails "
    "the export gate on depth, depth_conf and world_points of the worst scene (the float32 ONNX passes; measured "
    "2026-11-30, CPU, TensorRT-RTX installed).",
)
def test_readme_main_job_passes(demo):
    _, result = demo
    assert result.exit_code == 0, result.output


def test_the_same_gate_fails_for_a_scrambled_proj_lin(demo, tmp_path):
    from lite3r.data.synthetic import make_scene
    from lite3r.distill import load_student
    from lite3r.parity import check, teacher_gate

    out, _ = demo  # a failed gate still delivers the artifacts
    args = _main_job_args()
    assert args[0] == "vggt-small"
    frames = int(args[args.index("--frames") + 1].split(":")[0]) if "--frames" in args else 2
    teacher = lite3r.load_model("vggt-small")
    student = load_student(teacher, out)
    scenes = [make_scene(frames, 224, 224, seed=1000).images]  # the export's first parity scene
    gate = teacher_gate("auto", trained_teacher=has_trained_weights("vggt-small"))
    assert gate.enforced
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if ".proj_lin." in name:  # a fresh nn.Linear's scale, as if distillation had gone wrong
                bound = param.shape[-1] ** -0.5
                param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))
    result = check(tmp_path / "scrambled", scenes, student=student, teacher=teacher, reconstruction_gate=gate)
    assert not result.passed
    assert any(line.startswith("student vs teacher") for line in result.failures())
