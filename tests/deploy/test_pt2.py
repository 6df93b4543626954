"""``export_pt2`` / ``load_pt2``: a CPU AOTInductor package of a tiny SLA student (reference SLA path) runs in a
process that never imports lite3r and matches the student over its dynamic frame range; the Polygraphy runner
passes parity; a C++ program loads it too; bad options fail before any work; FP8 linears export.

One package is compiled for the module (AOTInductor on this CPU takes minutes, so the student is vggt-tiny cut
to two aggregator layers, 56x56 views)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lite3r
from lite3r.deploy.torch.pt2 import Pt2DeviceError, Pt2Error, export_pt2, load_pt2
from lite3r.parity import OUTPUT_NAMES, check

SIZE = 56  # 16 patches + 5 camera/register tokens = 21 tokens per frame
FRAMES = "4:5:7"  # 84..147 tokens: 2 or 3 key blocks of 64, so the block counts change inside the range
SLA = dict(kh=0.5, kl=0.34)  # 2 key blocks: 1 critical, 0 negligible; 3: 2 critical, 1 negligible


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = lite3r.load_model("vggt-tiny", img_size=SIZE, depth=2, dinov2_depth=1, dpt_layers=(0, 0, 1, 1))
    student = lite3r.convert_to_sla(teacher, layers="global", **SLA)
    for core in (m for m in student.modules() if hasattr(m, "proj_lin")):
        torch.nn.init.normal_(core.proj_lin.weight, std=0.05)  # a trained-like linear branch, not zero
    return student.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(path, report, {frames: (images, student outputs)}) for one float32 CPU package."""
    folder = tmp_path_factory.mktemp("pt2")
    student = _student()
    cases = {}
    for frames in (4, 5, 7):
        images = torch.rand(1, frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            cases[frames] = (images, {k: v.clone() for k, v in student(images).items()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = export_pt2(student, folder / "model.pt2", frames=FRAMES, image_size=SIZE, dtype="float32",
                            device="cpu")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return folder / "model.pt2", report, cases


_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import torch

    package, cases = sys.argv[1:]
    model = torch._inductor.aoti_load_package(package)
    errors = {}
    for frames, (images, expected) in torch.load(cases).items():
        outputs = model(images)
        errors[frames] = {k: ((outputs[k] - v).abs().max() / v.abs().max()).item() for k, v in expected.items()}
    print(json.dumps({"lite3r_imported": any(m.split(".")[0] == "lite3r" for m in sys.modules),
                      "outputs": sorted(outputs), "errors": errors, "metadata": model.get_metadata()}))
    """
)


@pytest.mark.slow
def test_package_runs_without_lite3r_and_matches_the_student(package, tmp_path):
    path, report, cases = package
    torch.save(cases, tmp_path / "cases.pt")
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(path), str(tmp_path / "cases.pt")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["lite3r_imported"] is False
    assert result["outputs"] == sorted(OUTPUT_NAMES)
    assert set(result["errors"]) == {"4", "5", "7"}  # both ends of the range and a count it was not traced at
    worst = {frames: max(e.values()) for frames, e in result["errors"].items()}
    assert max(worst.values()) < 1e-4, result["errors"]  # float32: same math, fused and reordered
    assert result["metadata"]["lite3r.frames"] == FRAMES and result["metadata"]["lite3r.image_size"] == "56x56"
    assert report.sla_layers == 2 and report.fp8_layers == 0 and report.file_bytes == path.stat().st_size


@pytest.mark.slow
def test_runner_checks_its_input_and_passes_parity(package, tmp_path):
    path, _, cases = package
    runner = load_pt2(path)
    assert (runner.frames, runner.image_size, runner.dtype) == ((4, 5, 7), (56, 56), "float32")
    assert runner.device == torch.device("cpu")
    with pytest.raises(Pt2Error, match="8 frames is outside model.pt2's range 4..7"):
        runner(torch.rand(1, 8, 3, SIZE, SIZE))
    with pytest.raises(Pt2Error, match=r"takes images \[1, S, 3, 56, 56\]; got \[1, 4, 3, 70, 70\]"):
        runner(torch.rand(1, 4, 3, 70, 70))
    with pytest.raises(FileNotFoundError):
        load_pt2(tmp_path / "missing.pt2")
    if not torch.cuda.is_available():  # parity lists such a package as not run on this machine, not as failed
        with pytest.raises(Pt2DeviceError, match="no CUDA GPU"):
            load_pt2(path, device="cuda")

    result = check(tmp_path, [cases[f][0][0] for f in (4, 7)], student=_student(), pt2_path=path)
    [comparison] = result.comparisons
    assert (comparison.candidate, comparison.gate, result.passed) == ("pt2", "export", True), result.failures()
    assert [(a.name, a.status) for a in result.artifacts] == [("model.pt2", "compared")]


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(frames="5:4:3"), ValueError, "MIN <= OPT <= MAX"),
        (dict(image_size=50), Pt2Error, "multiples of the patch size 14"),
        (dict(dtype="int8"), ValueError, "dtype must be one of"),
        (dict(device="cuda"), Pt2Error, "no CUDA GPU here"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, options, error, message):
    if options.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(error, match=message):
        export_pt2(_student(), tmp_path / "model.pt2", **{"device": "cpu", "image_size": SIZE, **options})
    assert list(tmp_path.iterdir()) == []


def test_runtime_settings_are_refused(tmp_path):
    student = _student()
    student.aggregator.global_blocks[0].attn.core.dense_below = 4096
    with pytest.raises(Pt2Error, match=r"dense_below=4096 \(a TorchRuntime setting\); exports run SLA at every length"):
        export_pt2(student, tmp_path / "model.pt2", device="cpu", image_size=SIZE)
    student.aggregator.global_blocks[0].attn.core.dense_below = 0
    student.aggregator.global_blocks[1].attn.core.qk_codes = "int8"
    with pytest.raises(Pt2Error, match=r"qk_codes='int8' \(a TorchRuntime setting\); exports score in 16 bits"):
        export_pt2(student, tmp_path / "model.pt2", device="cpu", image_size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_fp8_linears_export_with_a_dynamic_frame_axis():
    """The prepared FP8 student traces to ``_scaled_mm`` GEMMs with the frame axis still symbolic."""
    from lite3r.deploy.torch import prepare_model
    from lite3r.deploy.torch.pt2 import _export
    from lite3r.deploy.frames import parse_frames
    from lite3r.quant import FP8Recipe

    student = _student()
    entries = [
        {"module": name, "tensor": tensor, "format": "e4m3", "num_bits": [4, 3], "axis": None, "amax": amax}
        for name in FP8Recipe().linear_names(student)
        for tensor, amax in (("input", 8.0), ("weight", student.get_submodule(name).weight.abs().max().item()))
    ]
    state = {"format": "lite3r.quant_state", "version": 1, "quantizers": entries}
    model = prepare_model(student, device=torch.device("cpu"), dtype=torch.bfloat16, quant_state=state)
    program = _export(model, (SIZE, SIZE), parse_frames(FRAMES), torch.device("cpu"))
    gemms = [n for n in program.graph.nodes if n.target == torch.ops.aten._scaled_mm.default]
    assert len(gemms) == len(entries) // 2
    frames = program.graph_signature.user_inputs[0]
    [images] = [n for n in program.graph.nodes if n.name == frames]
    assert isinstance(images.meta["val"].shape[1], torch.SymInt)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ loader")
def test_cpp_loader_runs_the_package(package, tmp_path):
    """scripts/pt2_cpp: a C++ program on torch::inductor::AOTIModelPackageLoader loads the package and gives the
    Python loader's outputs."""
    script = Path(__file__).parents[2] / "scripts" / "pt2_cpp" / "check_cpp_loader.py"
    done = subprocess.run(
        [sys.executable, str(script), str(package[0]), "--frames", "5", "--build-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert (result["compiled"], result["ran"], result["matched"]) == (True, True, True), result
    assert set(result["max_rel_error"]) == set(OUTPUT_NAMES)
