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
    assert result.md_path.read_text().startswith(
        "# Parity: PASSED: onnx vs student (export gate); student vs teacher (reconstruction gate) on 2 scene(s)"
    )
    [onnx_status] = result.artifacts
    assert (onnx_status.name, onnx_status.status) == ("student.onnx", "compared")
    assert "export gate passed" in onnx_status.detail and "abs error" in onnx_status.detail


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
def test_engine_without_tensorrt_is_listed_as_not_run(tmp_path, teacher, scenes):
    result = check(tmp_path, scenes, student=teacher, teacher=teacher, engine_path=tmp_path / "model.engine")
    assert result.passed
    [engine] = result.artifacts
    assert engine.status == "not run" and "datacenter TensorRT is not installed" in engine.detail
    assert result.verdict.endswith("not run: model.engine")
    assert "| model.engine | not run |" in result.md_path.read_text()


def test_every_artifact_of_the_folder_is_listed_and_an_rtx_engine_is_not_run(tmp_path, teacher, student_onnx, scenes):
    """The demo's case: a TensorRT-RTX engine beside the ONNX was never compared, and the report says so."""
    student, onnx_path = student_onnx
    names = ["model.onnx", "model.onnx.data", "model.engine", "model.build.log", "student.safetensors",
             "quant_state.json", "export_summary.json", "notes.bin"]  # fmt: skip
    result = check(tmp_path, scenes, student=student, onnx_path=onnx_path, engine_path=tmp_path / "model.engine",
                   engine_target="tensorrt-rtx", artifacts=names)  # fmt: skip
    statuses = {a.name: a.status for a in result.artifacts}
    assert statuses == {
        "model.onnx": "not run", "student.onnx": "compared", "model.onnx.data": "not run", "model.engine": "not run",
        "model.build.log": "record", "student.safetensors": "reference", "quant_state.json": "reference",
        "export_summary.json": "record", "notes.bin": "not run",
    }  # fmt: skip
    engine = next(a for a in result.artifacts if a.name == "model.engine")
    assert "TensorRT-RTX" in engine.detail and "cannot run on this machine" in engine.detail
    assert result.passed and "not run: model.engine" in result.verdict
    assert json.loads(result.json_path.read_text())["artifacts"][0]["name"] == "export_summary.json"


def test_a_runner_that_cannot_start_is_one_failed_line(tmp_path, teacher, scenes):
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not a protobuf")
    result = check(tmp_path / "report", scenes, student=teacher, teacher=teacher, onnx_path=corrupt)
    assert not result.passed
    [status] = result.artifacts
    assert status.status == "failed to run" and "onnxruntime" in status.detail and "\n" not in status.detail
    assert result.failures() == [status.describe()]
    assert "failed to run: model.onnx" in result.verdict


@pytest.mark.parametrize(("noise_run", "precision"), [("student~0", "fp32"), ("student~fp32", "bf16")])
def test_noise_rule_bounds_the_export_gate(noise_run, precision):
    """An export may differ from the student by its gate's atol plus twice what the student moves under the noise
    of the export's precision (a perturbed run in float32, the float32 student for bf16), and no more: the rule
    that makes an FP8 rounding-boundary flip pass and a real change fail."""
    import numpy as np
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult

    from lite3r.parity.comparison import _compare
    from lite3r.parity.gates import export_gate

    gate = export_gate(precision)
    base = {name: np.full((1, 2, 9) if name == "pose_enc" else (1, 2, 4, 4), 1.0, np.float32) for name in OUTPUT_NAMES}

    def shifted(pose: float) -> dict:
        return base | {"pose_enc": base["pose_enc"] + np.float32(pose)}

    def results(candidate_shift: float) -> RunResults:
        runs = RunResults()
        for name, outputs in (("onnx", shifted(candidate_shift)), ("student", base), (noise_run, shifted(0.05))):
            runs[name] = [IterationResult(outputs, runner_name=name)]
        return runs

    close = _compare(results(0.08), "onnx", "student", gate, OUTPUT_NAMES)
    pose = next(o for o in close.outputs if o.name == "pose_enc")
    assert close.passed and pose.noise_floor == pytest.approx(0.05)
    assert pose.atol_used == pytest.approx(gate.tolerances["pose_enc"].atol + 0.1)
    far = _compare(results(0.2), "onnx", "student", gate, OUTPUT_NAMES)
    assert [o.name for o in far.outputs if not o.passed] == ["pose_enc"]


def _runtime_case(dense_below: int, global_proj_scale: float = 1.0, device: str = "cpu", qk_codes: str | None = None):
    """A student (proj_lin non-zero) and a TorchRuntime of a copy of it (CPU: vggt-tiny, eager bf16; CUDA: vggt-small,
    whose head dim 64 takes the Triton SLA kernels, compiled + CUDA graphs), whose global-attention output
    projections are scaled by ``global_proj_scale`` (1: faithful)."""
    import lite3r
    from lite3r.deploy.torch import RuntimeOptions, TorchRuntime

    cuda = device == "cuda"
    torch.manual_seed(0)
    student = lite3r.convert_to_sla(lite3r.load_model("vggt-small" if cuda else "vggt-tiny"))
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "proj_lin" in name:
                param.normal_(0, 0.05)
    served = copy.deepcopy(student)
    with torch.no_grad():
        for name, param in served.named_parameters():
            if "global_blocks" in name and name.endswith("attn.proj.weight"):
                param.mul_(global_proj_scale)
    options = RuntimeOptions(compile=cuda, cuda_graphs=cuda, dense_below=dense_below, qk_codes=qk_codes)
    return student, TorchRuntime.build(served, options, device=device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dense_below, qk_codes", [(0, None), (4096, None), (0, "int8")])
def test_runtime_is_held_to_the_student_as_it_runs_it(tmp_path, dense_below, qk_codes, device):
    """The runtime against the float student, under the bf16 export gate; with the dense fallback (8-bit scores)
    the student attends exactly (scores 8-bit codes) too: a copy, the caller's student keeps its settings."""
    from lite3r.data.synthetic import make_scene
    from lite3r.sla import SparseLinearAttention

    student, runtime = _runtime_case(dense_below, device=device, qk_codes=qk_codes)
    scenes = [make_scene(3, 112, 112, seed=1000 + i).images for i in range(2)]  # 207 tokens: 4 key blocks
    result = check(tmp_path / "ok", scenes, student=student, runtime=runtime)
    assert result.passed and [(c.candidate, c.reference, c.gate) for c in result.comparisons] == [
        ("runtime", "student", "export-bf16")
    ]
    assert all(m.dense_below == 0 and m.qk_codes is None for m in student.modules()
               if isinstance(m, SparseLinearAttention))  # fmt: skip
    _, wrong = _runtime_case(dense_below, global_proj_scale=1.1, device=device, qk_codes=qk_codes)
    failed = check(tmp_path / "wrong", scenes, student=student, runtime=wrong)
    assert not failed.passed and any(line.startswith("runtime vs student") for line in failed.failures())


def test_runtime_with_a_dense_fallback_is_not_compared_beside_artifacts(tmp_path, student_onnx, scenes):
    student, runtime = _runtime_case(4096)
    with pytest.raises(ValueError, match="attends exactly below 4096 tokens and the artifacts never do"):
        check(tmp_path, scenes, student=student, runtime=runtime, onnx_path=student_onnx)
    student, runtime = _runtime_case(0, qk_codes="fp8")
    with pytest.raises(ValueError, match="scores attention with fp8 codes and the artifacts never do"):
        check(tmp_path, scenes, student=student, runtime=runtime, onnx_path=student_onnx)
