"""``lite3r.parity.check`` on a tiny model with the official outputs, exported to ONNX here: a faithful export
and a close student pass; a perturbed export or a far student fail with the failing output named."""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lite3r.models.vggt import VGGTConfig, vggt_family
from lite3r.parity import EXPORT_GATE, OUTPUT_NAMES, check, feed_dicts


class TinyReconstructor(nn.Module):
    """Per-pixel heads and a pooled pose head: the official output dict of VGGT in a few parameters."""

    family = vggt_family(VGGTConfig())

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.depth, self.points, self.conf = nn.Conv2d(3, 1, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 2, 1)
        self.pose = nn.Linear(3, 9)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b, s, c, h, w = images.shape
        x = images.reshape(b * s, c, h, w)
        conf = 1 + torch.exp(self.conf(x))
        return {
            "pose_enc": self.pose(x.mean((2, 3))).reshape(b, s, 9),
            "depth": (F.softplus(self.depth(x)) + 0.1).reshape(b, s, 1, h, w).permute(0, 1, 3, 4, 2),
            "depth_conf": conf[:, 0].reshape(b, s, h, w),
            "world_points": self.points(x).reshape(b, s, 3, h, w).permute(0, 1, 3, 4, 2),
            "world_points_conf": conf[:, 1].reshape(b, s, h, w),
        }


def _perturbed(model: nn.Module, **offsets: float) -> nn.Module:
    """A copy with ``offsets[head]`` added to every parameter of that head."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for head, offset in offsets.items():
            for p in getattr(other, head).parameters():
                p.add_(offset)
    return other


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return TinyReconstructor().eval()


@pytest.fixture(scope="module")
def scenes() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 3, 14, 14, generator=generator), torch.rand(1, 2, 3, 14, 28, generator=generator)]


def _export(model: nn.Module, path) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and 20x faster here than dynamo
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(1, 2, 3, 14, 14),), path, input_names=["images"], output_names=list(OUTPUT_NAMES),
            dynamic_axes={"images": {1: "S", 3: "H", 4: "W"}}, dynamo=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def student_onnx(teacher, tmp_path_factory):
    """The student (the teacher with a tiny weight change) and its faithful ONNX export."""
    student = _perturbed(teacher, depth=1e-3, pose=1e-3)
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    _export(student, path)
    return student, path


def test_faithful_export_and_close_student_pass(tmp_path, teacher, student_onnx, scenes):
    student, onnx_path = student_onnx
    result = check(tmp_path, scenes, student=student, teacher=teacher, onnx_path=onnx_path)

    assert result.passed and result.failures() == []
    assert [(c.candidate, c.reference, c.gate) for c in result.comparisons] == [
        ("onnx", "student", "export"),
        ("student", "teacher", "reconstruction"),
    ]
    export, reconstruction = result.comparisons
    assert all(o.absdiff["max"] < 1e-4 for o in export.outputs)  # ORT and PyTorch agree to float noise
    assert 0 < reconstruction.metrics["depth_abs_rel"] < 0.01
    report = json.loads(result.json_path.read_text())
    assert report["passed"] is True and report["scenes"] == 2
    assert set(report["comparisons"][1]["metrics"]) >= {"depth_abs_rel", "rotation_error_deg"}
    assert result.md_path.read_text().startswith("# Parity: PASSED")


def test_perturbed_export_fails_naming_the_output(tmp_path, student_onnx, scenes):
    student, _ = student_onnx
    broken = tmp_path / "broken.onnx"
    _export(_perturbed(student, depth=0.05), broken)  # an export bug confined to the depth head

    result = check(tmp_path / "report", scenes, student=student, onnx_path=broken)

    assert not result.passed
    [export] = result.comparisons
    assert [o.name for o in export.outputs if not o.passed] == ["depth"]
    assert result.failures()[0].startswith("onnx vs student: depth: quantile abs error")
    report = json.loads((tmp_path / "report" / "parity.json").read_text())
    assert report["passed"] is False and report["failures"] == result.failures()
    assert "| depth | quantile |" in (tmp_path / "report" / "parity.md").read_text()


def test_far_student_fails_the_reconstruction_gate(tmp_path, teacher, scenes):
    far = _perturbed(teacher, pose=0.5)
    result = check(tmp_path, scenes, student=far, teacher=teacher)

    [reconstruction] = result.comparisons
    assert not result.passed
    assert [o.name for o in reconstruction.outputs if not o.passed] == ["pose_enc"]
    assert reconstruction.failed_metrics == ["translation_error_deg"]
    assert result.failures()[-1].startswith("student vs teacher: translation_error_deg")


def test_tighter_gate_turns_noise_into_failures(tmp_path, teacher, scenes):
    strict = type(EXPORT_GATE)("strict", {name: type(t)(0.0, 0.0, "max") for name, t in EXPORT_GATE.tolerances.items()})
    result = check(tmp_path, scenes, student=_perturbed(teacher, points=1e-3), teacher=teacher,
                   reconstruction_gate=strict)  # fmt: skip
    assert [o.name for o in result.comparisons[0].outputs if not o.passed] == ["world_points"]


def test_bad_input_is_rejected_before_running(tmp_path, teacher):
    with pytest.raises(ValueError, match=r"expected \[S, 3, H, W\] or \[1, S, 3, H, W\]"):
        check(tmp_path, [torch.rand(2, 14, 14)], student=teacher, teacher=teacher)
    with pytest.raises(ValueError, match="at least one input scene"):
        feed_dicts([])
    with pytest.raises(ValueError, match="needs a student and at least one of"):
        check(tmp_path, [torch.rand(2, 3, 14, 14)], teacher=teacher)
    assert not (tmp_path / "parity.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="datacenter TensorRT is installed here")
def test_engine_without_tensorrt_is_skipped_with_a_note(tmp_path, teacher, scenes):
    result = check(tmp_path, scenes, student=teacher, teacher=teacher, engine_path=tmp_path / "model.engine")
    assert result.passed
    assert result.notes and "datacenter TensorRT is not installed" in result.notes[0]
