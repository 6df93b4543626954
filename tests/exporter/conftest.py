"""A small SLA student of vggt-tiny and its ONNX exports, built once per session (each export traces for ~20 s).

The student converts every frame and global layer (6 SLA layers) with kh = kl = 0.3, so that at 112 x 112
(69 tokens per frame) the block map has critical, marginal and negligible key blocks from 3 frames on, and its
``proj_lin`` is random (a fresh student's is zero, which would hide the linear branch).
"""

from __future__ import annotations

import copy

import pytest
import torch

import lite3r
from lite3r.data import make_scene

IMAGE_SIZE = (112, 112)
SLA_OPTIONS = dict(layers="all", kh=0.3, kl=0.3)
# vggt-tiny trimmed to 3 aggregator layers, 1 DINOv2 block and 2 camera iterations: the same code paths, half
# the export time.
TRIMMED = dict(depth=3, dpt_layers=(0, 1, 2, 2), dinov2_depth=1, camera_iterations=2)


def make_student() -> torch.nn.Module:
    torch.manual_seed(0)
    student = lite3r.convert_to_sla(lite3r.load_model("vggt-tiny", **TRIMMED).eval(), **SLA_OPTIONS)
    for name, param in student.named_parameters():
        if ".proj_lin." in name:
            torch.nn.init.normal_(param, std=0.2)
    return student


@pytest.fixture
def tiny():
    return lite3r.load_model("vggt-tiny", **TRIMMED)


@pytest.fixture(scope="session")
def student():
    return make_student()


@pytest.fixture(scope="session")
def scenes():
    return [make_scene(2, *IMAGE_SIZE, seed=i) for i in range(2)]


@pytest.fixture(scope="session")
def float_export(student, tmp_path_factory):
    from lite3r.exporter import export_onnx

    path = tmp_path_factory.mktemp("float") / "student.onnx"
    return export_onnx(student, path, image_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def fp8_student(student, scenes):
    """The student with ModelOpt FP8 fake quantizers calibrated on two scenes, and its quant state."""
    from lite3r.calibration import calibrate_fp8, quant_state

    quantized = calibrate_fp8(copy.deepcopy(student), scenes)
    return quantized, quant_state(quantized)


@pytest.fixture(scope="session")
def fp8_export(student, fp8_student, tmp_path_factory):
    """Also the external-data case: the size threshold is lowered so that the weights go to ``.data``."""
    from lite3r.exporter import export, export_onnx

    path = tmp_path_factory.mktemp("fp8") / "student_fp8.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
        return export_onnx(student, path, image_size=IMAGE_SIZE, quant_state=fp8_student[1])


@pytest.fixture(scope="session")
def bf16_fp8_export(student, fp8_student, tmp_path_factory):
    """The float32 student exported in bf16 with its FP8 quant state (the exporter converts a copy)."""
    from lite3r.exporter import export_onnx

    path = tmp_path_factory.mktemp("bf16") / "student_bf16.onnx"
    return export_onnx(student, path, image_size=IMAGE_SIZE, quant_state=fp8_student[1], precision="bf16")
