"""The README's main job on the shipped vggt-small teacher: it passes with the student-vs-teacher gate
enforced, and the same gate fails for a student whose proj_lin is scrambled.

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


def test_readme_main_job_passes_with_the_teacher_gate_enforced(demo):
    out, result = demo
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity.json").read_text())
    [gate] = [c for c in report["comparisons"] if c["gate"] == "reconstruction"]
    assert gate["enforced"] and gate["passed"], gate


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
