"""The FP8 student's MLP epilogue alone: ``e4m3(clamp(GELU(fc1(x) + b) * m))``, the pass between its two FP8 GEMMs.

In the H200 profile of 2026-12-01 (100 frames) the three Inductor kernels of this epilogue (DINOv2, frame and global
blocks) took 84 of 1182 ms, at about 1.4 TB/s where a pass that reads bf16 and writes e4m3 can reach the H200's
~4 TB/s. This script times the epilogue at VGGT-1B's MLP width (4096) for ``frames x 1374`` tokens, compiled as the
runtime compiles it and in variants that tell whether the pass is bound by memory or by the exact (erf) GELU:

- ``cast``: the quantization alone (the floor for a pass of these bytes);
- ``runtime``: the runtime's epilogue (``torch.compile`` with ``emulate_precision_casts``);
- ``no-emulate``: the same without rounding every intermediate to bf16;
- ``tanh``: ``GELU(approximate="tanh")``;
- ``triton-*``: one hand-written Triton kernel over ``[tokens, 4096]`` tiles (the bias loaded once per tile):
  ``bias-cast`` (no GELU), ``erf`` (libdevice ``erf``), ``erf-as`` (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7:
  one reciprocal, one exponential and a few FMAs, no branch);
- ``bias-in-gemm``: fc1 with the bias added by ``torch._scaled_mm`` (cuBLAS epilogue) against fc1 + a separate add.

Reported: median ms, effective TB/s (bytes read + written / time) and the fraction of e4m3 codes that differ from
the runtime's.

    PYTHONPATH=src python3 benchmarks/bench_gelu_epilogue.py --frames 32 100 --out gelu.json      # CUDA
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lite3r.bench.measure import time_call, write_results
from lite3r.quant import quantize_e4m3

TOKENS_PER_FRAME, DIM, HIDDEN = 37 * 37 + 5, 1024, 4096


def epilogue(approximate: str):
    def run(y: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        return quantize_e4m3(F.gelu(y + bias, approximate=approximate), multiplier)

    return run


@triton.jit
def _erf_as(x):
    """erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), odd-extended."""
    a = tl.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    y = 1.0 - poly * tl.exp(-a * a)
    return tl.where(x < 0, -y, y)


@triton.jit
def _epilogue_kernel(Y, BIAS, OUT, MULTIPLIER, tokens, GELU: tl.constexpr, BLOCK_T: tl.constexpr,
                     BLOCK_C: tl.constexpr, HIDDEN_DIM: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = rows.to(tl.int64)[:, None] * HIDDEN_DIM + cols[None, :]
    mask = rows[:, None] < tokens
    y = tl.load(Y + offsets, mask=mask, other=0.0).to(tl.float32)
    x = (y + tl.load(BIAS + cols).to(tl.float32)[None, :]).to(tl.bfloat16).to(tl.float32)  # eager's bf16 add
    if GELU == 1:
        x = (0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))).to(tl.bfloat16).to(tl.float32)
    elif GELU == 2:
        x = (0.5 * x * (1.0 + _erf_as(x * 0.7071067811865476))).to(tl.bfloat16).to(tl.float32)
    codes = tl.clamp(x * tl.load(MULTIPLIER), -448.0, 448.0).to(tl.float8e4nv)
    tl.store(OUT + offsets, codes, mask=mask)


def triton_epilogue(gelu: int, block_t: int = 32, block_c: int = 256, warps: int = 4):
    def run(y: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        out = torch.empty(y.shape, device=y.device, dtype=torch.float8_e4m3fn)
        grid = (triton.cdiv(y.shape[0], block_t), HIDDEN // block_c)
        _epilogue_kernel[grid](y, bias, out, multiplier, y.shape[0], GELU=gelu, BLOCK_T=block_t,
                               BLOCK_C=block_c, HIDDEN_DIM=HIDDEN, num_warps=warps)  # fmt: skip
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    cast = torch.compile(lambda y, b, m: quantize_e4m3(y, m), dynamic=False)
    variants = {
        "cast": cast,
        "runtime": torch.compile(epilogue("none"), dynamic=False, options={"emulate_precision_casts": True}),
        "no-emulate": torch.compile(epilogue("none"), dynamic=False),
        "tanh": torch.compile(epilogue("tanh"), dynamic=False, options={"emulate_precision_casts": True}),
        "triton-bias-cast": triton_epilogue(0),
        "triton-erf": triton_epilogue(1),
        "triton-erf-as": triton_epilogue(2),
        "triton-erf-as 64x128": triton_epilogue(2, 64, 128),
        "triton-erf-as 16x512 8 warps": triton_epilogue(2, 16, 512, 8),
    }
    rows = []
    for frames in args.frames:
        tokens = frames * TOKENS_PER_FRAME
        torch.manual_seed(frames)
        y = torch.randn(tokens, HIDDEN, device=device, dtype=torch.bfloat16)
        bias = 0.1 * torch.randn(HIDDEN, device=device, dtype=torch.bfloat16)
        multiplier = torch.tensor(448 / 6.0, device=device)
        gigabytes = y.numel() * 3 / 1e9
        reference = variants["runtime"](y, bias, multiplier)
        for name, fn in variants.items():
            codes = fn(y, bias, multiplier)
            ms = time_call(lambda: fn(y, bias, multiplier), args.reps, device).median_ms
            differ = (codes.view(torch.uint8) != reference.view(torch.uint8)).float().mean().item()
            rows.append({"frames": frames, "variant": name, "ms": ms, "tb_per_s": gigabytes / ms,
                         "codes_differ": differ})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        x = quantize_e4m3(torch.randn(tokens, DIM, device=device), torch.tensor(100.0, device=device))
        weight = quantize_e4m3(torch.randn(HIDDEN, DIM, device=device), torch.tensor(100.0, device=device))
        one = torch.tensor(0.01, device=device)
        gemm = lambda **kw: torch._scaled_mm(x, weight.t(), one, one, out_dtype=torch.bfloat16, **kw)  # noqa: E731
        add = torch.compile(lambda t, b: t + b, dynamic=False)
        for name, fn in {"gemm": gemm, "gemm+bias-in-gemm": lambda: gemm(bias=bias),
                         "gemm+add": lambda: add(gemm(), bias)}.items():  # fmt: skip
            ms = time_call(fn, args.reps, device).median_ms
            tflop_per_s = 2 * tokens * DIM * HIDDEN / ms / 1e9
            rows.append({"frames": frames, "variant": name, "ms": ms, "tflop_per_s": tflop_per_s})
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, rows=rows)
    print("\n| frames | variant | ms | TB/s or TFLOP/s | codes differing from runtime |")
    for r in rows:
        rate = f"{r['tb_per_s']:.2f} TB/s" if "tb_per_s" in r else f"{r['tflop_per_s']:.0f} TFLOP/s"
        print(f"| {r['frames']} | {r['variant']} | {r['ms']:.3f} | {rate} | {r.get('codes_differ', '')} |")


if __name__ == "__main__":
    main()
