"""Run kernel_checks' cases under the Triton interpreter (CPU) and print the results as JSON lines.

Started in a subprocess by test_sla_kernels_interpreted.py: TRITON_INTERPRET is read when a kernel is
decorated, so it must be set before lite3r.sla.kernels is imported, and must not leak into other tests.
Prints the kernels' Python type (proof that the interpreter is on), the classification kernel's disagreements
with the reference, then one ``run_case`` result per case.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from kernel_checks import CASES, classify_mismatches, run_case  # noqa: E402


def _patch_interpreter_bf16_dot() -> None:
    """The interpreter keeps bf16 as raw uint16 and multiplies the bit patterns in ``tl.dot``
    (triton-lang/triton#11584, not fixed in 3.9); widen bf16 operands to fp32 first. GPU code is unaffected."""
    original = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):
        return original(self, widen(a), widen(b), d, *args)

    interpreter.InterpreterBuilder.create_dot = create_dot


def main(names: list[str]) -> None:
    from lite3r.sla import kernels

    print(json.dumps({"kernel_type": type(kernels.forward_kernel).__name__}), flush=True)
    _patch_interpreter_bf16_dot()
    print(json.dumps({"classify_mismatches": classify_mismatches()}), flush=True)
    for name in names or CASES:
        print(json.dumps(run_case(name, **CASES[name])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
