"""The FP8 ONNX on the oldest onnxruntime the project declares (``pyproject.toml``'s floor).

``.ci/run`` installs that version into ``.ci/onnxruntime-floor`` (``pip install --target``, beside the current one);
the checks run in a subprocess that imports it first. Without the folder the test skips here and fails under CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FLOOR_DIR = Path(os.environ.get("LITE3R_ONNXRUNTIME_FLOOR", ROOT / ".ci" / "onnxruntime-floor"))


def declared_floor() -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"onnxruntime>=([\d.]+)"', pyproject).group(1)


@pytest.fixture(scope="module")
def floor_python():
    if not (FLOOR_DIR / "onnxruntime").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the oldest supported onnxruntime into {FLOOR_DIR} (.ci/run does)")
        pytest.skip(f"the oldest supported onnxruntime is not installed in {FLOOR_DIR} (.ci/run installs it)")

    def run(code: str, *args: str) -> str:
        path = os.pathsep.join([str(FLOOR_DIR), str(ROOT / "src"), str(Path(__file__).parent)])
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                              env=os.environ | {"PYTHONPATH": path})  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    return run


def test_floor_is_the_declared_one(floor_python):
    version = floor_python("import onnxruntime; print(onnxruntime.__version__)").strip()
    assert tuple(map(int, version.split("."))) == tuple(map(int, (declared_floor() + ".0.0").split(".")[:3]))


def test_fp8_codes_on_the_oldest_onnxruntime_are_modelopts(floor_python, tmp_path):
    from fp8_sweep import sweep

    from lite3r.quant import fp8_dequant_scale, fp8_multiplier, quantize_e4m3

    floor_python("import runpy, sys; runpy.run_module('fp8_sweep', run_name='__main__')", str(tmp_path / "o.npz"))
    got = np.load(tmp_path / "o.npz")
    amaxes, inputs = sweep()
    multipliers = fp8_multiplier(torch.from_numpy(amaxes)).reshape(-1, 1)
    codes = quantize_e4m3(torch.from_numpy(inputs), multipliers).float()
    np.testing.assert_array_equal(got["codes"].view(np.uint32), codes.numpy().view(np.uint32))
    dequantized = (codes * fp8_dequant_scale(multipliers)).numpy()
    np.testing.assert_array_equal(got["dequantized"].view(np.uint32), dequantized.view(np.uint32))


_RUN_EXPORT = """
import sys, numpy as np, onnxruntime as ort
from lite3r.parity.runners import SessionFromOnnxPath, probe_onnxruntime
probe_onnxruntime()
images = np.random.default_rng(0).random((1, 3, 3, 112, 112), dtype=np.float32)
outputs = SessionFromOnnxPath(sys.argv[1])().run(None, {"images": images})
np.savez(sys.argv[2], *outputs)
try:
    ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    print("plain session: loads")
except Exception as e:
    print("plain session:", str(e).splitlines()[0])
"""


@pytest.mark.slow
def test_fp8_export_runs_on_the_oldest_onnxruntime(floor_python, fp8_export, fp8_student, tmp_path):
    """The oldest onnxruntime reproduces the PyTorch FP8 student; the current one agrees with it except on
    pose_enc. Seen 2026-11-30 (onnxruntime 1.32 vs 1.20, CPU): 1.32's LayerNormalization differs from PyTorch's by
    ~2e-6, which moves a few FP8 codes, and the random tiny camera head turns that into 0.033 of pose_enc (the
    export gate's noise rule covers it); 1.20 matches PyTorch to 1e-7."""
    from lite3r.parity.runners import SessionFromOnnxPath

    said = floor_python(_RUN_EXPORT, str(fp8_export.path), str(tmp_path / "o.npz"))
    old = np.load(tmp_path / "o.npz")
    images = np.random.default_rng(0).random((1, 3, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        student = fp8_student[0].eval()(torch.from_numpy(images))
    current = SessionFromOnnxPath(fp8_export.path)().run(None, {"images": images})
    for i, name in enumerate(fp8_student[0].family.outputs):
        np.testing.assert_allclose(old[f"arr_{i}"], student[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        if name != "pose_enc":
            np.testing.assert_allclose(old[f"arr_{i}"], current[i], rtol=1e-4, atol=1e-5, err_msg=name)
    # why lite3r's sessions switch the Q/DQ rewrites off: a plain session of this onnxruntime mis-fuses FP8
    assert "MatMulIntegerToFloat" in said or "plain session: loads" in said
