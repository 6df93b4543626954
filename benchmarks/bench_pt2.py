"""The SLA student as ``model.pt2`` (AOTInductor) on one GPU: export + compile, load in a fresh process that never
imports lite3r, errors against the PyTorch student, latency per frame count (the plain package, and the package
replayed inside a CUDA graph), and the C++ loader.

    PYTHONPATH=src python3 benchmarks/bench_pt2.py --out "$OUT/pt2"          # VGGT-1B, bf16, frames 2:8:100
    PYTHONPATH=src python3 benchmarks/bench_pt2.py --model vggt-tiny --size 56 --frames 4:5:7 --time-frames 4 7 \
        --fp32-frames 4 --device cpu --dtype float32 --out /tmp/pt2_smoke   # the same steps on a CPU, in minutes

Weights are random (seeded), ``proj_lin`` drawn non-zero so the linear branch counts. Errors: relative L2 norm
of the difference per output. References: the same prepared 16-bit model run eagerly (Triton SLA on CUDA: what the
package should reproduce up to fusion), and the float32 student (reference SLA) at the ``--fp32-frames`` counts.
Writes ``results.json`` and ``log.txt`` under ``--out``; prints a table last. The package itself goes to
``--package`` (default ``build/pt2/model.pt2``, git-ignored, so a later ``lite3r bench --pt2`` on a warm machine
can time it beside the other variants).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lite3r
from lite3r.deploy.torch import prepare_model
from lite3r.deploy.torch.prepare import resolve_dtype
from lite3r.deploy.torch.pt2 import export_pt2
from lite3r.parity.gates import OUTPUT_NAMES

STARTED = time.perf_counter()
LOG: list[str] = []

# Runs in a fresh interpreter: only torch, as a deployment would.
FRESH = r"""
import faulthandler, json, sys, time
import torch

faulthandler.enable()  # a crash in native code still names the Python line it happened under


def step(message):  # progress on stderr: the last line says how far a process that died got
    print(message, file=sys.stderr, flush=True)

package, folder, reps, frame_counts = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(f) for f in sys.argv[4:]]
start = time.perf_counter()
step("loading the package")
model = torch._inductor.aoti_load_package(package)
result = {"load_s": time.perf_counter() - start, "timing": {}}
cuda = model.get_metadata()["lite3r.device"] == "cuda"

def sync():
    if cuda:
        torch.cuda.synchronize()

def timed(run):
    run(); run(); sync()  # warm-up: first-call initialisation
    start = time.perf_counter()
    for _ in range(reps):
        run()
    sync()
    return (time.perf_counter() - start) / reps * 1e3

with torch.inference_mode():
    for frames in frame_counts:
        images = torch.load(f"{folder}/images_{frames}.pt").to("cuda" if cuda else "cpu")
        step(f"{frames} frames: first call")
        outputs = model(images)
        torch.save({k: v.float().cpu() for k, v in outputs.items()}, f"{folder}/pt2_{frames}.pt")
        row = {"plain_ms": timed(lambda: model(images))}
        if cuda:  # the package inside a CUDA graph: no host in the loop (what TorchRuntime does per shape)
            step(f"{frames} frames: CUDA graph capture")
            try:
                static = images.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    model(static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    captured = model(static)
                graph.replay(); sync()
                row["graph_max_abs_diff"] = max((captured[k].float() - outputs[k].float()).abs().max().item()
                                                for k in outputs)
                row["graph_ms"] = timed(graph.replay)
                del graph, captured
            except Exception as e:  # recorded, not fatal: the plain package is the artifact
                row["graph_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        del outputs
        if cuda:
            torch.cuda.empty_cache()
        result["timing"][frames] = row
result["lite3r_imported"] = any(m.split(".")[0] == "lite3r" for m in sys.modules)
print(json.dumps(result))
"""


def log(message: str) -> None:
    line = f"[{time.perf_counter() - STARTED:7.1f} s] {message}"
    LOG.append(line)
    print(line, flush=True)


def relative_errors(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: ((out[k].float() - ref[k].float()).norm() / ref[k].float().norm()).item() for k in OUTPUT_NAMES}


@torch.inference_mode()
def run_eager(model, images: dict[int, torch.Tensor], device: torch.device, reps: int) -> tuple[dict, dict]:
    outputs, timing = {}, {}
    for frames, x in images.items():
        x = x.to(device)
        outputs[frames] = {k: v.float().cpu() for k, v in model(x).items()}
        if reps:
            _sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                model(x)
            _sync(device)
            timing[frames] = (time.perf_counter() - start) / reps * 1e3
    return outputs, timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vggt")
    parser.add_argument("--size", type=int, help="view size (default: the model's)")
    parser.add_argument("--frames", default="2:8:100", help="the package's frame range min:opt:max")
    parser.add_argument("--time-frames", type=int, nargs="+", default=[2, 8, 32, 100])
    parser.add_argument("--fp32-frames", type=int, nargs="*", default=[2, 8], help="float32 student reference at")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--package", type=Path, default=Path("build/pt2/model.pt2"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="the C++ loader check runs only if this much time is not yet spent minus 90 s")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__}
    if device.type == "cuda":
        results["device"] = torch.cuda.get_device_name(device)
        import triton

        results["triton"] = triton.__version__

    def save() -> None:  # after every step: a run cut short still leaves what it measured
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "log.txt").write_text("\n".join(LOG) + "\n")

    torch.manual_seed(args.seed)
    teacher = lite3r.load_model(args.model)
    student = lite3r.convert_to_sla(teacher, layers="global", kh=args.kh, kl=args.kl).eval()
    del teacher
    for core in (m for m in student.modules() if hasattr(m, "proj_lin")):
        torch.nn.init.normal_(core.proj_lin.weight, std=0.05)
    size = args.size or student.config.img_size
    images = {f: torch.rand(1, f, 3, size, size, generator=torch.Generator().manual_seed(f)) for f in args.time_frames}
    log(f"{args.model} SLA student built ({sum(p.numel() for p in student.parameters()) / 1e6:.1f} M parameters)")

    eager = prepare_model(copy.deepcopy(student), device=device, dtype=resolve_dtype(args.dtype))
    eager_out, eager_ms = run_eager(eager, images, device, reps=1)  # a rough number beside the reference outputs
    results["eager_16bit_ms"] = eager_ms
    del eager
    log(f"eager {args.dtype} reference: {eager_ms}")
    fp32_frames = [f for f in args.fp32_frames if f in images]
    student.to(device)
    fp32_out, _ = run_eager(student, {f: images[f] for f in fp32_frames}, device, reps=0)
    student.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"float32 student reference at {fp32_frames} frames")
    save()

    args.package.parent.mkdir(parents=True, exist_ok=True)
    # No load-and-run check inside the export: the fresh process below does it at every timed frame count.
    report = export_pt2(
        student, args.package, frames=args.frames, image_size=size, dtype=args.dtype, device=device, check=False
    )
    results["export"] = {k: getattr(report, k) for k in ("export_s", "compile_s", "check_s", "file_bytes")}
    log(report.summary())
    del student
    if device.type == "cuda":
        torch.cuda.empty_cache()
    save()

    with tempfile.TemporaryDirectory() as folder:
        for frames, x in images.items():
            torch.save(x, f"{folder}/images_{frames}.pt")
        command = [sys.executable, "-c", FRESH, str(args.package), folder, str(args.reps), *map(str, images)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:  # negative: killed by that signal (e.g. -11, a segfault)
            results["fresh_process_error"] = {"returncode": done.returncode, "stderr": done.stderr[-3000:]}
            save()
            log(f"fresh process FAILED (return code {done.returncode}):\n{done.stderr[-3000:]}")
            return 1
        fresh = json.loads(done.stdout.splitlines()[-1])
        pt2_out = {f: torch.load(f"{folder}/pt2_{f}.pt") for f in images}
    results["fresh_process"] = fresh
    results["errors_vs_eager_16bit"] = {f: relative_errors(pt2_out[f], eager_out[f]) for f in images}
    results["errors_vs_fp32"] = {f: relative_errors(pt2_out[f], fp32_out[f]) for f in fp32_frames}
    results["eager_16bit_errors_vs_fp32"] = {f: relative_errors(eager_out[f], fp32_out[f]) for f in fp32_frames}
    log(f"fresh process: lite3r imported = {fresh['lite3r_imported']}, load {fresh['load_s']:.1f} s")
    save()

    if time.perf_counter() - STARTED < args.budget_s - 90:
        cpp = subprocess.run(
            [sys.executable, str(Path(__file__).parents[1] / "scripts/pt2_cpp/check_cpp_loader.py"),
             str(args.package), "--frames", str(min(images)), "--json", str(args.out / "cpp_loader.json")],
            capture_output=True, text=True,
        )  # fmt: skip
        results["cpp_loader"] = (
            json.loads((args.out / "cpp_loader.json").read_text())
            if (args.out / "cpp_loader.json").exists() else {"error": cpp.stderr[-2000:]}
        )  # fmt: skip
        log(f"C++ loader: exit {cpp.returncode}")
    else:
        results["cpp_loader"] = {"error": f"not run: {args.budget_s:.0f} s time budget nearly spent"}
    save()

    print(f"\n{args.model} SLA student, {args.dtype}, model.pt2 frames {args.frames}, views {size}x{size}, "
          f"{results.get('device', device)}")  # fmt: skip
    print(f"export {report.export_s:.0f} s, compile {report.compile_s:.0f} s, "
          f"package {report.file_bytes / 2**30:.2f} GiB, "
          f"fresh-process load {fresh['load_s']:.1f} s, lite3r imported there: {fresh['lite3r_imported']}")  # fmt: skip
    print(f"| frames | eager {args.dtype} ms | pt2 ms | pt2 in CUDA graph ms | max rel err vs eager | vs fp32 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for f in images:
        row = fresh["timing"][str(f)]
        vs_fp32 = max(results["errors_vs_fp32"][f].values()) if f in fp32_frames else float("nan")
        graph = f"{row['graph_ms']:.1f}" if "graph_ms" in row else row.get("graph_error", "-")[:40]
        print(f"| {f} | {eager_ms.get(f, float('nan')):.1f} | {row['plain_ms']:.1f} | {graph} | "
              f"{max(results['errors_vs_eager_16bit'][f].values()):.2e} | {vs_fp32:.2e} |")  # fmt: skip
    cpp_result = results["cpp_loader"]
    print(f"C++ loader: compiled {cpp_result.get('compiled')}, ran {cpp_result.get('ran')}, "
          f"matched {cpp_result.get('matched')}, {cpp_result.get('ms_per_run', '-')} ms/run")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
