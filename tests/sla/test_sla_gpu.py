"""The Triton kernels on CUDA against the reference: the interpreter cases at longer sequences, and the
``auto`` backend choosing Triton there."""

from __future__ import annotations

import pytest
import torch

from kernel_checks import CASES, classify_mismatches, run_case, violations
from lite3r.sla.op import resolve_backend

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("length", [1374, 3 * 1374 + 5])
def test_kernels_match_reference_on_cuda(name, length):
    case = {**CASES[name], "length": length, "heads": 2}
    result = run_case(name, **case, kh=0.1, kl=0.1, device="cuda")
    assert result["unwritten"] == []
    assert not violations(result)


def test_classification_kernel_equals_the_reference_on_cuda():
    assert classify_mismatches("cuda") == 0


def test_auto_backend_is_triton_for_cuda_half_inputs():
    q = torch.zeros(1, 1, 8, 64, device="cuda", dtype=torch.bfloat16)
    assert resolve_backend("auto", q) == "triton"
    assert resolve_backend("auto", q.float()) == "reference"
