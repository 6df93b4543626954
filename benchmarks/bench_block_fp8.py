"""One VGGT-1B transformer block (dim 1024, 16 heads, MLP 4096, q/k-norm, RoPE, LayerScale) compiled several
ways: where FP8 loses its GEMM gain to the elementwise passes around the GEMMs, and whether Inductor's Triton
GEMM templates with fused epilogues (bias, GELU, FP8 quantization, LayerScale, residual) win it back.

Each variant runs in its own process (Inductor options are global) under ``--variant-seconds``; a variant that
does not finish compiling in time is recorded as such. Per variant and frame count: compile seconds, median ms
of the compiled block (CUDA events), the largest difference from the default FP8 block's output, and the top
kernels (torch.profiler), so that a fused template shows up by name (``triton_tem_...``).

    PYTHONPATH=src python3 benchmarks/bench_block_fp8.py --frames 8 32 --out block_fp8.json    # CUDA
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from lite3r.bench.measure import time_call, write_results
from lite3r.deploy.torch.fp8 import FP8Linear
from lite3r.deploy.torch.prepare import cast_floating
from lite3r.models.layers import Block, RotaryPositionEmbedding2D, patch_positions

TOKENS_PER_FRAME = 37 * 37 + 5  # 518x518 views, patch 14, camera + 4 register tokens
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
BASE = {"emulate_precision_casts": True}  # TorchRuntime's Inductor options
TEMPLATES = {"max_autotune_gemm": True, "max_autotune_gemm_search_space": "DEFAULT"}
VARIANTS = {  # name -> (fp8: False, True or "fast-accum", Inductor options, dynamic)
    "bf16": (False, BASE, False),
    "fp8": (True, BASE, False),
    "fp8-fast-accum": ("fast-accum", BASE, False),  # _scaled_mm(use_fast_accum=True): Hopper's cheaper accumulation
    "fp8-no-emulate": (True, {}, False),  # what emulate_precision_casts (eager-exact FP8 codes) costs
    "fp8-triton-gemm": (True, {**BASE, **TEMPLATES, "max_autotune_gemm_backends": "TRITON"}, False),
    "fp8-autotune-fusion": (True, {**BASE, **TEMPLATES, "max_autotune_gemm_backends": "ATEN,TRITON",
                                   "benchmark_epilogue_fusion": True}, False),  # fmt: skip
    "fp8-triton-gemm-dynamic": (True, {**BASE, **TEMPLATES, "max_autotune_gemm_backends": "TRITON"}, True),
}


def make_block(fp8: bool | str, device: torch.device) -> Block:
    torch.manual_seed(0)
    block = Block(1024, 16, 4.0, init_values=0.01, qk_norm=True, rope=RotaryPositionEmbedding2D())
    block = block.to(device).eval()
    if fp8:
        for name in LINEARS:
            linear = block.get_submodule(name)
            layer = FP8Linear.from_linear(linear, linear.weight.abs().amax(), torch.tensor(8.0),
                                          use_fast_accum=fp8 == "fast-accum")
            parent, _, leaf = name.rpartition(".")
            setattr(block.get_submodule(parent), leaf, layer)
    return cast_floating(block, torch.bfloat16)  # FP8Linear keeps its e4m3 weight and float32 scales


def inputs(frames: int, block: Block, device: torch.device):
    torch.manual_seed(1)
    x = torch.randn(frames, TOKENS_PER_FRAME, 1024, device=device, dtype=torch.bfloat16)
    pos = patch_positions(1, 37, 37, 5, device)
    table = block.attn.rope.table(pos, block.attn.head_dim)
    return x, table


def top_kernels(fn, count: int = 8) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key[:80], e.device_time_total / 1e3) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA]  # fmt: skip
    return [(k, round(ms, 3)) for k, ms in sorted(rows, key=lambda r: -r[1])[:count]]


@torch.no_grad()
def run_variant(name: str, frame_counts: list[int], reps: int) -> list[dict]:
    fp8, options, dynamic = VARIANTS[name]
    device = torch.device("cuda")
    reference = make_block(True, device)
    block = make_block(fp8, device)
    compiled = torch.compile(block, options=options, dynamic=dynamic)
    rows = []
    for frames in frame_counts:
        x, table = inputs(frames, block, device)
        start = time.perf_counter()
        out = compiled(x, rope=table)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        timing = time_call(lambda: compiled(x, rope=table), reps, device, warmup=2)
        expected = reference(x, rope=table)
        rows.append({
            "variant": name, "frames": frames, "tokens": frames * TOKENS_PER_FRAME, "compile_s": round(compile_s, 1),
            "median_ms": round(timing.median_ms, 3), "min_ms": round(timing.min_ms, 3),
            "max_abs_diff_vs_eager_fp8": float((out.float() - expected.float()).abs().max()),
            "top_kernels": top_kernels(lambda: compiled(x, rope=table)),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--variant-seconds", type=float, default=150, help="time limit of each variant's process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        run_variant(args.variants[0], args.frames, args.reps)
        return
    results = []
    for name in args.variants:
        command = [sys.executable, __file__, "--child", "--variants", name, "--reps", str(args.reps), "--frames",
                   *map(str, args.frames)]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.variant_seconds)
            lines, status = done.stdout, "ok" if done.returncode == 0 else f"exit {done.returncode}"
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
        except subprocess.TimeoutExpired as e:
            lines, status = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
        rows = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
        results.append({"variant": name, "status": status, "rows": rows})
        print(f"{name}: {status}, {len(rows)} of {len(args.frames)} frame counts", flush=True)
    write_results(args.out, results=results)
    print("\n| variant | frames | compile s | ms | vs bf16 | max diff vs eager FP8 | top kernel |")
    bf16 = {r["frames"]: r["median_ms"] for v in results if v["variant"] == "bf16" for r in v["rows"]}
    for v in results:
        for r in v["rows"]:
            ratio = f"{bf16[r['frames']] / r['median_ms']:.2f}x" if r["frames"] in bf16 else "-"
            print(f"| {v['variant']} | {r['frames']} | {r['compile_s']} | {r['median_ms']} | {ratio} | "
                  f"{r['max_abs_diff_vs_eager_fp8']:.3g} | {r['top_kernels'][0][0][:40]} |")  # fmt: skip
        if not v["rows"]:
            print(f"| {v['variant']} | - | {v['status']} | | | | |")


if __name__ == "__main__":
    main()
