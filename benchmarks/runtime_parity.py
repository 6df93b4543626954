"""Issue 10's parity item at full size: each way the runtime runs the VGGT-1B SLA student (eager bf16, compiled,
compiled + CUDA graphs, eager and graphed with FP8 GEMMs) against the student, through ``lite3r.parity.check``
under the bf16 export gate: the student runs as a bf16 copy and the runtime may differ from it by ``atol + 2 x
noise``, the noise being the float32 student's distance from that copy (docs/deploy.md).

The student has seeded random weights with non-zero ``proj_lin`` (the linear branch counts), kh 5 %, kl 10 %. The
FP8 runtimes' reference is the fake-quantized student (ModelOpt max calibration on synthetic scenes, as
``lite3r bench`` calibrates), the others' the plain student. Scenes of 4 views (5496 tokens) take the SLA
path; the runtime's default ``dense_below`` (4096) applies to them as served. One parity report per runtime under
``--out``, and one table here.

    PYTHONPATH=src:/tmp/site python3 benchmarks/runtime_parity.py --out "$OUT/runtime_parity"   # CUDA, ModelOpt
    PYTHONPATH=src python3 benchmarks/runtime_parity.py --model vggt-tiny --size 56 --device cpu --out /tmp/rp
        # the eager runtimes on a CPU (compiling and CUDA graphs need CUDA here)
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import lite3r
from lite3r.calibration import calibrate_fp8, quant_state
from lite3r.data.synthetic import make_scene
from lite3r.deploy.torch import RuntimeOptions, TorchRuntime
from lite3r.parity import check

EAGER = dict(compile=False, cuda_graphs=False)
RUNTIMES = {"eager-bf16": EAGER, "compiled-bf16": dict(cuda_graphs=False), "graph-bf16": {}, "eager-fp8": EAGER,
            "graph-fp8": {}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--calibration-scenes", type=int, default=4)
    parser.add_argument("--model", default="vggt")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    torch.manual_seed(0)
    student = lite3r.convert_to_sla(lite3r.load_model(args.model), layers="global", kh=0.05, kl=0.10)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "proj_lin" in name:
                param.normal_(0, 0.05)
    student = student.eval().to(args.device)  # the float32 references run on the GPU too (TF32 stays off)
    size = (args.size, args.size)
    scenes = [make_scene(args.views, *size, seed=1000 + i).images for i in range(args.scenes)]
    calibration = [make_scene(args.views, *size, seed=2000 + i).images for i in range(args.calibration_scenes)]
    quantized = calibrate_fp8(copy.deepcopy(student), calibration, num_batches=len(calibration))
    state = quant_state(quantized)
    rows = []
    for name, options in RUNTIMES.items():
        if not cuda and options is not EAGER:
            continue
        fp8 = name.endswith("fp8")
        runtime = TorchRuntime.build(copy.deepcopy(student), RuntimeOptions(**options), device=args.device,
                                     quant_state=state if fp8 else None)  # fmt: skip
        reference = quantized if fp8 else student
        result = check(args.out / name, scenes, student=reference, runtime=runtime)
        for comparison in result.comparisons:
            for output in comparison.outputs:
                reference_name = "fake-quantized student" if fp8 else "student"
                rows.append({"runtime": name, "reference": reference_name, "gate": comparison.gate,
                             "output": output.name, "passed": output.passed, "abs_error": output.absdiff[output.stat],
                             "atol_used": output.atol_used or output.atol,
                             "noise_floor": output.noise_floor})  # fmt: skip
        print(result.verdict, flush=True)
        runtime.release()
        del runtime
        if cuda:
            torch.cuda.empty_cache()
    (args.out / "runtime_parity.json").write_text(json.dumps(rows, indent=1))
    print("\n| runtime | output | max abs error vs bf16 student | noise (float32 vs bf16) | atol used | passed |")
    for r in rows:
        print(f"| {r['runtime']} | {r['output']} | {r['abs_error']:.3g} | {r['noise_floor'] or 0:.3g} | "
              f"{r['atol_used']:.3g} | {r['passed']} |")


if __name__ == "__main__":
    main()
