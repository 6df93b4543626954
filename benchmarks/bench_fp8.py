"""FP8 fast path: per-layer GEMM speed vs bf16, end-to-end SLA-student latency bf16 vs FP8, and the output
error of the real FP8 path against the fake-quantized (ModelOpt) model with the same scales.

1. GEMMs at the shapes of the VGGT trunk's linears (qkv, proj, fc1, fc2) for ``--gemm-frames`` frames of
   ``--size`` views: bf16 ``F.linear``; ``FP8Linear`` (input quantization + ``_scaled_mm`` + bias); the bare
   ``_scaled_mm`` on pre-quantized input, with and without fast accumulation.
2. The model (random weights, seed 0) -> ``convert_to_sla`` student -> FP8 calibration on two synthetic
   scenes (``calibrate_fp8``, default recipe: the trunk) -> ``convert_to_fp8``. Output error of real FP8 vs
   fake quant (and vs the bf16 student, for scale) on a held-out synthetic scene of ``--error-frames`` views.
End-to-end latency and memory of the bf16 and FP8 students: ``lite3r bench`` (variants student-bf16, student-fp8).

    PYTHONPATH=src python3 benchmarks/bench_fp8.py --out fp8.json                       # CUDA, VGGT-1B size
    PYTHONPATH=src python3 benchmarks/bench_fp8.py --model vggt-tiny --size 112 --out fp8_tiny.json
    PYTHONPATH=src python3 benchmarks/bench_fp8.py --smoke                              # CPU, tiny, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
import torch.nn.functional as F

import lite3r
from lite3r.bench.measure import time_call
from lite3r.calibration import calibrate_fp8, quant_state
from lite3r.data import make_scene
from lite3r.deploy.torch.fp8 import FP8Linear, check_fp8_device, convert_to_fp8

TOKENS_EXTRA = 5  # camera + 4 register tokens per frame


def time_ms(fn, reps: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` after one warm-up call (``lite3r.bench.measure``)."""
    return time_call(fn, reps, device).median_ms


@torch.no_grad()
def bench_gemms(model, frames: int, size: int, reps: int, device: torch.device) -> list[dict]:
    block = model.aggregator.global_blocks[0]
    tokens = frames * ((size // model.config.patch_size) ** 2 + TOKENS_EXTRA)
    rows = []
    for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        linear = block.get_submodule(name).to(device)
        x = torch.randn(tokens, linear.in_features, device=device, dtype=torch.bfloat16)
        amax = x.float().abs().amax()
        fp8 = FP8Linear.from_linear(linear, linear.weight.abs().amax(), amax).to(device)
        w_bf16, b_bf16 = linear.weight.bfloat16(), linear.bias.bfloat16()
        xq = (x.float() * fp8.input_scale_reciprocal).clamp(-448, 448).to(torch.float8_e4m3fn)
        row = {"layer": name, "M": tokens, "K": linear.in_features, "N": linear.out_features}
        row["bf16_ms"] = time_ms(lambda: F.linear(x, w_bf16, b_bf16), reps, device)
        row["fp8_linear_ms"] = time_ms(lambda: fp8(x), reps, device)
        for fast in (False, True):
            row[f"scaled_mm{'_fast' if fast else ''}_ms"] = time_ms(
                lambda f=fast: torch._scaled_mm(
                    xq, fp8.weight.t(), fp8.input_scale, fp8.weight_scale, out_dtype=torch.bfloat16, use_fast_accum=f
                ),
                reps,
                device,
            )
        flops = 2 * tokens * linear.in_features * linear.out_features
        row |= {f"{k[:-3]}_tflops": flops / (row[k] * 1e-3) / 1e12 for k in list(row) if k.endswith("_ms")}
        row["speedup_fp8_linear"] = row["bf16_ms"] / row["fp8_linear_ms"]
        rows.append(row)
    return rows


@torch.no_grad()
def output_errors(fake, real, reference, scene, device: torch.device) -> dict:
    """Errors of ``real`` (FP8 GEMMs) against ``fake`` (fake quant) and of ``fake`` against the bf16 student."""
    images = scene.images.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out_fake, out_real, out_ref = fake(images), real(images), reference(images)
    errors = {}
    for name, (a, b) in {"real_vs_fake": (out_real, out_fake), "fake_vs_bf16": (out_fake, out_ref)}.items():
        for key in ("pose_enc", "depth", "world_points"):
            diff = (a[key].float() - b[key].float()).abs()
            errors[f"{name}/{key}_max_abs"] = diff.max().item()
            errors[f"{name}/{key}_rel"] = (diff.mean() / b[key].float().abs().mean()).item()
        depth_a, depth_b = a["depth"].float(), b["depth"].float()
        errors[f"{name}/depth_abs_rel"] = ((depth_a - depth_b).abs() / depth_b.abs().clamp_min(1e-6)).mean().item()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vggt")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--gemm-frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--error-frames", type=int, default=4)
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the full results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="CPU, vggt-tiny, tiny sizes: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.size, args.gemm_frames, args.error_frames, args.reps = (
            "vggt-tiny", 28, [2], 2, 1
        )  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    check_fp8_device(device)
    started = time.perf_counter()

    torch.manual_seed(0)
    teacher = lite3r.load_model(args.model).to(device).eval()
    result = {
        "args": vars(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "gemm": [
            row for frames in args.gemm_frames for row in bench_gemms(teacher, frames, args.size, args.reps, device)
        ],
    }
    student = lite3r.convert_to_sla(teacher, layers="global", kh=args.kh, kl=0.10)
    del teacher
    calibration = [make_scene(2, args.size, args.size, seed=s) for s in (1, 2)]
    fake = calibrate_fp8(copy.deepcopy(student), calibration)
    real = convert_to_fp8(copy.deepcopy(student), quant_state(fake))
    result["fp8_layers"] = sum(isinstance(m, FP8Linear) for m in real.modules())
    held_out = make_scene(args.error_frames, args.size, args.size, seed=100)
    result["errors"] = output_errors(fake, real, student, held_out, device)
    del fake
    result["wall_s"] = time.perf_counter() - started
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print_tables(result)


def print_tables(result: dict) -> None:
    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}, {result['args']['model']}, "
          f"{result['fp8_layers']} FP8 linears, {result['wall_s']:.0f} s")
    print("\n| layer | M x K x N | bf16 ms | FP8Linear ms | _scaled_mm ms | fast-accum ms | FP8Linear speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in result["gemm"]:
        print(f"| {r['layer']} | {r['M']}x{r['K']}x{r['N']} | {r['bf16_ms']:.3f} | {r['fp8_linear_ms']:.3f} | "
              f"{r['scaled_mm_ms']:.3f} | {r['scaled_mm_fast_ms']:.3f} | {r['speedup_fp8_linear']:.2f}x |")
    print("\n| output error | pose_enc rel | depth rel | depth AbsRel | world_points rel |")
    print("|---|---:|---:|---:|---:|")
    for name in ("real_vs_fake", "fake_vs_bf16"):
        e = result["errors"]
        print(f"| {name} | {e[f'{name}/pose_enc_rel']:.2e} | {e[f'{name}/depth_rel']:.2e} | "
              f"{e[f'{name}/depth_abs_rel']:.2e} | {e[f'{name}/world_points_rel']:.2e} |")


if __name__ == "__main__":
    main()
