"""Which AOTInductor packages load in a fresh process on this machine? (issue 11: the VGGT-1B student's 2.3 GB
``.pt2`` and the 25 MiB ``vggt-small`` one both segfault inside ``aoti_load_package`` on the H200, torch 2.11,
2026-11-30, so the package size is not the cause.)

    python3 scripts/pt2_load_probe.py --device cuda          # every case, about a minute each
    python3 scripts/pt2_load_probe.py --device cuda --cases mlp --loads fresh-cuda-init in-process
    python3 scripts/pt2_load_probe.py --device cpu --cases mlp

Cases, smallest first: ``mlp`` (two linears), ``triton`` (the same plus a user Triton kernel through a
``torch.library.triton_op``, as the SLA op is), ``triton-dynamic`` (that, with a dynamic batch axis, as the frame
axis is). Each is exported, compiled to a package and loaded in each way of ``--loads``: ``fresh`` (a new process
that imports only torch, as a deployment does), ``fresh-cuda-init`` (the same, CUDA initialised before the load)
``fresh-gdb`` (``fresh`` under ``gdb -batch``, for the native backtrace of a crash; not run without gdb), ``so``
(a fresh process loading a shared object from the deprecated ``torch._inductor.aot_compile`` with
``torch._export.aot_load``: the container runner without ``AOTIModelPackageLoader``, in which the lent image's
torch crashes) and
``in-process`` (the compiling process; last, since a crash there ends the probe). The return code (negative:
killed by that signal) and output error against eager are printed, one JSON line per case and load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

FRESH = r"""
import faulthandler, json, sys
import torch
faulthandler.enable()
if sys.argv[3] == "fresh-cuda-init":
    torch.cuda.init()
if sys.argv[3] == "so":  # the deprecated path: one shared object, run by the container runner, no package loader
    model = torch._export.aot_load(sys.argv[1], sys.argv[4])
else:
    model = torch._inductor.aoti_load_package(sys.argv[1])
x, expected = torch.load(sys.argv[2])
print(json.dumps({"max_abs_error": (model(x) - expected).abs().max().item()}))
"""
CASES = ("mlp", "triton", "triton-dynamic")
LOADS = ("fresh", "fresh-cuda-init", "fresh-gdb", "so", "in-process")


def _scaled_add():
    """A user Triton kernel behind a triton_op: y = x + 2 * x, the smallest thing of the SLA op's kind."""
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(x_ptr + offsets, mask=mask)
        tl.store(y_ptr + offsets, x + 2 * x, mask=mask)

    @triton_op("lite3r_probe::scaled_add", mutates_args=())
    def scaled_add(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        n = x.numel()
        wrap_triton(kernel)[(triton.cdiv(n, 256),)](x, y, n, BLOCK=256)
        return y

    return scaled_add


class Probe(torch.nn.Module):
    def __init__(self, op=None):
        super().__init__()
        self.first, self.second, self.op = torch.nn.Linear(256, 256), torch.nn.Linear(256, 256), op

    def forward(self, x):
        x = self.first(x)
        if self.op is not None:
            x = self.op(x.contiguous())
        return self.second(x)


def run_case(case: str, device: str, loads: list[str]) -> Iterator[dict]:
    """One result per load way, each as soon as it is known (an in-process crash must not lose the others)."""
    model = Probe(_scaled_add() if case.startswith("triton") else None).to(device).eval()
    x = torch.randn(4, 256, device=device)
    with torch.no_grad():
        expected = model(x)
    dynamic = {"x": {0: torch.export.Dim("batch", min=2, max=64)}} if case.endswith("dynamic") else None
    with tempfile.TemporaryDirectory() as folder:
        package, data = Path(folder) / "probe.pt2", Path(folder) / "io.pt"
        start = time.perf_counter()
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
        torch._inductor.aoti_compile_and_package(program, package_path=str(package))
        built = {"case": case, "device": device, "package_bytes": package.stat().st_size,
                 "compile_s": round(time.perf_counter() - start, 1), "torch": torch.__version__}  # fmt: skip
        torch.save((x, expected), data)
        for load in sorted(loads, key=LOADS.index):  # in-process last
            if load == "in-process":
                print(json.dumps(built | {"load": load, "started": True}), flush=True)  # a crash still says where
                error = (torch._inductor.aoti_load_package(str(package))(x) - expected).abs().max().item()
                yield built | {"load": load, "returncode": 0, "result": {"max_abs_error": error}}
                continue
            loaded = str(package)
            if load == "so":
                loaded = torch._inductor.aot_compile(
                    program.module(), (x,), options={"aot_inductor.output_path": str(Path(folder) / "probe.so")}
                )
            command = [sys.executable, "-c", FRESH, loaded, str(data), load, device]
            if load == "fresh-gdb":
                if shutil.which("gdb") is None:
                    yield built | {"load": load, "returncode": None, "result": "not run: no gdb here"}
                    continue
                command = ["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 40", "--args", *command]
            done = subprocess.run(command, capture_output=True, text=True)
            if load == "fresh-gdb":  # gdb's own status says nothing about the program: its output does
                yield built | {"load": load, "returncode": None, "result": done.stdout[-4000:]}
                continue
            outcome = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else _crash_report(done.stderr)
            yield built | {"load": load, "returncode": done.returncode, "result": outcome}


def _crash_report(stderr: str) -> str:
    """faulthandler's Python stack of a crash (not the list of extension modules after it that hides it)."""
    start = stderr.find("Fatal Python error")
    report = stderr[start:] if start >= 0 else stderr
    return report.split("\nExtension modules:")[0][-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=["fresh"])
    args = parser.parse_args()
    failed = 0
    for case in args.cases:
        for result in run_case(case, args.device, args.loads):
            failed += result["returncode"] not in (0, None)
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
