"""Run kernel_checks' cases under the Triton interpreter (CPU) and print the results as JSON lines.

Started in a subprocess by test_sla_kernels_interpreted.py: TRITON_INTERPRET is read when a kernel is
decorated, so it must be set before lite3r.sla.kernels is imported, and must not leak into other tests.
Prints the kernels' Python type (proof that the interpreter is on), the classification kernel's disagreements
with the reference, one ``run_case`` result per case, then every distinct kernel launch (name, Triton signature,
constexprs, launch options) for the test that compiles them for sm_90: the interpreter does not type-check a
kernel as the compiler does.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
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


TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "i8",
                torch.int32: "i32", torch.int64: "i64", torch.bool: "i1", torch.float8_e4m3fn: "fp8e4nv"}


def _record_launches() -> list[dict]:
    """Make every interpreted launch append its (kernel, signature, constexprs, options) to the returned list."""
    launches: list[dict] = []
    original = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        parameters = inspect.signature(self.fn).parameters
        values = dict(zip(parameters, args))  # kernels declare no defaults (tests/sla/test_sla_op.py)
        values.update({k: v for k, v in kwargs.items() if k in parameters})
        signature, constexprs = {}, {}
        for name, p in parameters.items():
            value = values[name]
            if "constexpr" in str(p.annotation):
                signature[name], constexprs[name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[name] = "*" + TRITON_TYPES[value.dtype]
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                signature[name] = "i32" if -(2**31) <= int(value) < 2**31 else "i64"
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        launch = {"kernel": self.fn.__name__, "signature": signature, "constexprs": constexprs, "options": options}
        if launch not in launches:
            launches.append(launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = run
    return launches


def main(names: list[str]) -> None:
    from lite3r.sla import kernels

    print(json.dumps({"kernel_type": type(kernels.forward_kernel).__name__}), flush=True)
    _patch_interpreter_bf16_dot()
    launches = _record_launches()
    print(json.dumps({"classify_mismatches": classify_mismatches()}), flush=True)
    for name in names or CASES:
        print(json.dumps(run_case(name, **CASES[name])), flush=True)
    print(json.dumps({"launches": launches}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
