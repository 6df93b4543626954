"""SLA with Q K^T on 8-bit tensor cores (int8 or e4m3 codes, per-block scales, smoothed keys) against bf16, at
VGGT-1B's global-attention sizes (16 heads x D 64, 1374 tokens per 518² frame, kh 5 %, kl 10 %).

Each variant runs as the runtime runs the op: inside ``torch.compile``, which replaces the op by its body so
that the quantization of q and k fuses into Inductor kernels. Reported per frame count: median ms of the whole
op, of the quantization alone and of the block map + marginal states (shared by all variants), and the
relative error (norm) against the float32 reference on the same block map (at ``--check-frames`` only: the
reference gathers every critical key) and against the bf16 kernel. Inputs: random q, v and keys with a shared
per-channel offset (what key smoothing removes; VGGT's q/k-norm leaves one).

    PYTHONPATH=src python3 benchmarks/bench_qk8.py --frames 8 32 100 --out qk8.json        # CUDA
"""

from __future__ import annotations

import argparse
import json

import torch

from bench_sla import relative_error  # this script's folder is on sys.path
from lite3r.bench.measure import time_call, write_results
from lite3r.sla import kernels, sparse_linear_attention
from lite3r.sla.reference import QK_CODES, block_map, quantize_blocks, smooth_keys, sparse_linear_attention_reference

HEADS, DIM, TOKENS_PER_FRAME = 16, 64, 37 * 37 + 5
VARIANTS = (None, *QK_CODES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 100])
    parser.add_argument("--check-frames", type=int, nargs="*", default=[8])
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    options = dict(kh=args.kh, kl=args.kl, block_q=64, block_k=64, feature_map="softmax")
    ops = {codes: torch.compile(lambda q, k, v, w, b, codes=codes: sparse_linear_attention(
        q, k, v, w, b, **options, qk_codes=codes), dynamic=False) for codes in VARIANTS}
    quantize = {codes: torch.compile(lambda q, k, codes=codes: (
        quantize_blocks(q, 64, codes), quantize_blocks(smooth_keys(k), 64, codes)), dynamic=False)
        for codes in QK_CODES}
    rows = []
    for frames in args.frames:
        torch.manual_seed(frames)
        length = frames * TOKENS_PER_FRAME
        q, k, v = (torch.randn(1, HEADS, length, DIM, device=device, dtype=torch.bfloat16) for _ in range(3))
        k += 2 * torch.randn(DIM, device=device, dtype=torch.bfloat16)
        weight = torch.randn(DIM, DIM, device=device) / DIM**0.5
        bias = torch.randn(DIM, device=device) / 10
        row = {"frames": frames, "tokens": length}
        with torch.no_grad():
            precompute = lambda: kernels.precompute(q, k, v, **options)  # noqa: E731
            row["precompute_ms"] = time_call(precompute, args.reps, device).median_ms
            outs = {}
            for codes in VARIANTS:
                name = codes or "bf16"
                outs[name] = ops[codes](q, k, v, weight, bias)
                row[f"{name}_ms"] = time_call(lambda: ops[codes](q, k, v, weight, bias), args.reps, device).median_ms
                if codes:
                    row[f"{name}_quantize_ms"] = time_call(lambda: quantize[codes](q, k), args.reps, device).median_ms
                    row[f"{name}_vs_bf16"] = relative_error(outs[name], outs["bf16"])
            if frames in args.check_frames:
                blocks = block_map(q, k, args.kh, args.kl, 64, 64)
                exact = sparse_linear_attention_reference(
                    q.float(), k.float(), v.float(), weight, bias, **options, blocks=blocks)
                for name, out in outs.items():
                    row[f"{name}_vs_fp32"] = relative_error(out, exact)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| frames | bf16 ms | int8 ms (quantize) | fp8 ms (quantize) | block map + states ms | rel. err int8 / fp8 "
          "vs bf16 |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['frames']} | {r['bf16_ms']:.3f} | {r['int8_ms']:.3f} ({r['int8_quantize_ms']:.3f}) | "
              f"{r['fp8_ms']:.3f} ({r['fp8_quantize_ms']:.3f}) | {r['precompute_ms']:.3f} | "
              f"{r['int8_vs_bf16']:.2e} / {r['fp8_vs_bf16']:.2e} |")
    write_results(args.out, args=vars(args), rows=rows)


if __name__ == "__main__":
    main()
