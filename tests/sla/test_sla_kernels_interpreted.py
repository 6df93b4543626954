"""The Triton kernels (forward and backward, through the registered op) against the reference, run under the
Triton interpreter on the CPU. One subprocess runs every case; interpreted_kernels.py says why and how."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

WORKER = Path(__file__).with_name("interpreted_kernels.py")
# Output dtype of each checked tensor: out and dq/dk/dv in the input dtype, proj_lin's gradients in float32.
FLOAT32_OUTPUTS = ("dweight", "dbias")


@pytest.fixture(scope="module")
def worker_output() -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def results(worker_output) -> list[dict]:
    return [r for r in worker_output if "case" in r]


def _dtype(case: str, tensor: str) -> torch.dtype:
    if tensor in FLOAT32_OUTPUTS:
        return torch.float32
    return torch.float16 if case.startswith("fp16") else torch.bfloat16


def test_interpreter_is_active_in_the_worker(worker_output):
    assert worker_output[0] == {"kernel_type": "InterpretedFunction"}


def test_kernels_write_every_output(results):
    assert len(results) >= 5
    assert {r["case"]: r["unwritten"] for r in results} == {r["case"]: [] for r in results}


def test_kernels_match_reference_within_low_precision_error(results):
    """Kernel error vs the float32 reference <= 2 x (error of the reference computed in the input dtype)
    + one rounding step of the output dtype at the tensor's largest magnitude."""
    failures = []
    for r in results:
        for tensor, (kernel_err, low_err, scale) in r["errors"].items():
            bound = 2 * low_err + torch.finfo(_dtype(r["case"], tensor)).eps * scale
            if not kernel_err <= bound:
                failures.append(f"{r['case']} (seed {r['seed']}) {tensor}: {kernel_err:.3g} > {bound:.3g}")
    assert not failures, "\n".join(failures)
