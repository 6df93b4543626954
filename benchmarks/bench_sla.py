"""Benchmark SLA against dense attention at VGGT global-attention shapes.

Shapes: B=1, 16 heads x D=64, 1374 tokens per frame (518x518), L = frames x 1374, bf16. For every frame count:
dense ``F.scaled_dot_product_attention`` forward and forward+backward, then SLA (the registered op, Triton
backend) at each kh: median times (``triton.testing.do_bench``), speedups, the stages timed separately (block
map, marginal states, fused kernel; backward kernels and GEMMs), the fused kernels' achieved TFLOP/s on the
work they do (counted below) next to dense SDPA's rate, and the error against the float32 reference.

    PYTHONPATH=src python3 benchmarks/bench_sla.py --out results.json        # CUDA
    PYTHONPATH=src python3 benchmarks/bench_sla.py --smoke                   # CPU, reference backend, tiny

FLOP counts (multiply-add = 2): dense forward ``4 L^2 D`` per head. SLA counts the padded tiles its kernels
multiply (``sla_flops``): forward per query block ``n_crit * 4 BQ BK D + 4 BQ D^2`` (QK^T and PV per critical
block; phi(q) M_i and proj_lin).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton

from lite3r.sla import sparse_linear_attention
from lite3r.sla.reference import block_counts, block_map, sparse_linear_attention_reference

TOKENS_PER_FRAME = 1374


def sla_flops(length: int, heads: int, dim: int, kh: float, block_q: int, block_k: int) -> dict[str, float]:
    """FLOPs the fused kernels execute (padded tiles), per pass."""
    nq, nk = math.ceil(length / block_q), math.ceil(length / block_k)
    n_crit, _ = block_counts(nk, kh, 0.0)
    pair = 2 * block_q * block_k * dim  # one BQ x BK x D matrix product
    linear_q = 2 * block_q * dim * dim  # one BQ x D x D product
    linear_k = 2 * block_k * dim * dim
    return {
        # QK^T, PV per critical pair; phi(q) M_i and proj_lin per query block.
        "forward_kernel": heads * nq * (n_crit * 2 * pair + 2 * linear_q),
        # query kernel: QK^T (statistics), QK^T, dO V^T, dS K; linear: phi M, dO W, dnum M^T, phi^T dnum.
        "backward_query_kernel": heads * nq * (n_crit * 4 * pair + 4 * linear_q),
        # key kernel, once per critical (query block, key block) pair: K Q^T, P^T dO, V dO^T, dS^T Q;
        # linear, once per key block: V dS^T, phi dS.
        "backward_key_kernel": heads * nq * n_crit * 4 * pair + heads * nk * 2 * linear_k,
        # marginal @ S (forward, recomputed in backward) and marginal^T @ dM.
        "state_gemm": heads * nq * nk * dim * dim * 2,
    }


def dense_flops(length: int, heads: int, dim: int) -> float:
    return 4 * length * length * dim * heads


def bench(fn, device: str) -> float:
    """Median milliseconds."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm()).item()


def stage_times(q, k, v, weight, bias, dout, out, kh, kl, block_q, block_k, feature_map, device) -> dict[str, float]:
    """Each stage of the Triton forward and backward on its own (CUDA only)."""
    from lite3r.sla import kernels
    from lite3r.sla.reference import block_scores

    options = (block_q, block_k, feature_map)
    kv_block, k_block, pooled_k = kernels.key_states(k, v, block_k, feature_map)
    pooled_q = kernels.pool(q, block_q)
    scores = block_scores(pooled_q, pooled_k)
    pre = kernels.precompute(q, k, v, kh, kl, *options)
    nk = kv_block.shape[1]
    marginal = pre.marginal[..., :nk]
    times = {
        "pool_q": bench(lambda: kernels.pool(q, block_q), device),
        "key_states": bench(lambda: kernels.key_states(k, v, block_k, feature_map), device),
        "block_scores": bench(lambda: block_scores(pooled_q, pooled_k), device),
        "classify": bench(lambda: kernels.classify(scores, kh, kl, kv_block.dtype), device),
        "marginal_sum_kv": bench(lambda: kernels.marginal_sum(marginal, kv_block, kv_block.dtype), device),
        "marginal_sum_k": bench(lambda: kernels.marginal_sum(marginal, k_block, torch.float32), device),
        "precompute": bench(lambda: kernels.precompute(q, k, v, kh, kl, *options), device),
        "forward_kernel": bench(lambda: kernels.launch_forward(q, k, v, weight, bias, pre, *options), device),
    }
    _, lse, delta, d_kv_query, d_k_query, linear_out = kernels.launch_backward_query(
        dout, q, k, v, weight, bias, out, pre, *options
    )
    d_kv_key = kernels.marginal_sum(marginal.transpose(1, 2), d_kv_query, torch.float32)
    d_k_key = kernels.marginal_sum(marginal.transpose(1, 2), d_k_query, torch.float32)
    csr = kernels.critical_csr(pre.blocks.critical, nk)
    times |= {
        "backward_query_kernel": bench(
            lambda: kernels.launch_backward_query(dout, q, k, v, weight, bias, out, pre, *options), device
        ),
        "marginal_sum_kv_transposed": bench(
            lambda: kernels.marginal_sum(marginal.transpose(1, 2), d_kv_query, torch.float32), device
        ),
        "critical_csr": bench(lambda: kernels.critical_csr(pre.blocks.critical, nk), device),
        "backward_key_kernel": bench(
            lambda: kernels.launch_backward_key(dout, q, k, v, lse, delta, csr, d_kv_key, d_k_key, *options), device
        ),
        "proj_lin_grad": bench(lambda: kernels._matmul_fp32(kernels._rows(dout).t(), kernels._rows(linear_out)),
                               device),
    }
    counts = csr[0].diff()
    times["csr_max_over_mean"] = (counts.max() / counts.float().mean()).item()
    return times


LAUNCH_CONFIGS = [(4, 3, 1), (4, 3, 2), (4, 2, 1), (4, 2, 2)]  # warps, stages, backward blocks per step


def tune(q, k, v, weight, bias, dout, kh, kl, block_q, block_k, feature_map) -> dict[str, dict[str, float]]:
    """Stage times of the three attention kernels for each configuration in LAUNCH_CONFIGS."""
    from lite3r.sla import kernels

    default_options, default_step = kernels._launch_options, kernels._step_blocks
    out = sparse_linear_attention(q, k, v, weight, bias, kh=kh, kl=kl, block_q=block_q, block_k=block_k,
                                  feature_map=feature_map)
    results = {}
    try:
        for warps, stages, step in LAUNCH_CONFIGS:
            kernels._launch_options = lambda *_: {"num_warps": warps, "num_stages": stages}
            kernels._step_blocks = lambda *_: step
            times = stage_times(q, k, v, weight, bias, dout, out, kh, kl, block_q, block_k, feature_map, "cuda")
            name = f"w{warps}s{stages}x{step}"
            results[name] = {n: times[n] for n in ("forward_kernel", "backward_query_kernel", "backward_key_kernel")}
            print(f"tune {name}: {results[name]}", flush=True)
    finally:
        kernels._launch_options, kernels._step_blocks = default_options, default_step
    pre = kernels.precompute(q, k, v, kh, kl, block_q, block_k, feature_map)
    kv_block, _, _ = kernels.key_states(k, v, block_k, feature_map)
    mask = pre.marginal[..., : kv_block.shape[1]]
    rows, depth, cols = mask.shape[1], mask.shape[2], kv_block.shape[2]
    for bm, bn, bk, warps, stages in GEMM_CONFIGS:
        result = torch.empty(mask.shape[0], rows, cols, device=q.device, dtype=kv_block.dtype)
        grid = (triton.cdiv(rows, bm), triton.cdiv(cols, bn), mask.shape[0])

        def gemm():
            kernels.marginal_sum_kernel[grid](mask, kv_block, result, *mask.stride(), rows, cols, depth,
                                              BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)

        name = f"gemm{bm}x{bn}x{bk}w{warps}s{stages}"
        results[name] = {"marginal_sum_kv": bench(gemm, "cuda")}
        print(f"tune {name}: {results[name]}", flush=True)
    return results


GEMM_CONFIGS = [(64, 256, 64, 4, 3), (64, 256, 64, 4, 4), (64, 256, 128, 4, 3), (64, 128, 64, 4, 3)]


def check_error(q, k, v, weight, bias, dout, kh, kl, block_q, block_k, feature_map, backend) -> dict[str, float]:
    """Relative error (norm) of the op's output and gradients against the float32 reference on the same map."""
    leaves = [x.detach().requires_grad_() for x in (q, k, v, weight, bias)]
    options = dict(kh=kh, kl=kl, block_q=block_q, block_k=block_k, feature_map=feature_map)
    out = sparse_linear_attention(*leaves, **options, backend=backend)
    got = (out, *torch.autograd.grad(out, leaves, dout))
    blocks = block_map(q, k, kh, kl, block_q, block_k)
    ref_leaves = [x.detach().float().requires_grad_() for x in (q, k, v, weight, bias)]
    ref = sparse_linear_attention_reference(*ref_leaves, **options, blocks=blocks)
    want = (ref, *torch.autograd.grad(ref, ref_leaves, dout.float()))
    names = ("out", "dq", "dk", "dv", "dweight", "dbias")
    errors = {n: relative_error(g, w) for n, g, w in zip(names, got, want)}
    errors["unwritten"] = float(sum(int((~torch.isfinite(g)).sum()) for g in got))
    return errors


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    backend = "reference" if device == "cpu" else "triton"
    heads, dim = args.heads, args.head_dim
    rows, tuning = [], {}
    for frames in args.frames:
        length = frames * args.tokens_per_frame
        q, k, v, dout = (torch.randn(1, heads, length, dim, device=device, dtype=dtype) for _ in range(4))
        weight = torch.randn(dim, dim, device=device) / dim**0.5  # a trained-looking proj_lin, not zeros
        bias = torch.randn(dim, device=device) * 0.1
        leaves = [x.detach().requires_grad_() for x in (q, k, v, weight, bias)]
        if args.tune and frames == args.frames[0]:
            tuning = tune(q, k, v, weight, bias, dout, args.kh[0], args.kl, args.block_q, args.block_k,
                          args.feature_map)
        dense_fwd = bench(lambda: F.scaled_dot_product_attention(q, k, v), device)

        def dense_step():
            out = F.scaled_dot_product_attention(*leaves[:3])
            torch.autograd.grad(out, leaves[:3], dout)

        dense_fwdbwd = bench(dense_step, device)
        dense_rate = dense_flops(length, heads, dim) / dense_fwd / 1e9
        for kh in args.kh:
            options = dict(kh=kh, kl=args.kl, block_q=args.block_q, block_k=args.block_k,
                           feature_map=args.feature_map, backend=backend)
            sla_fwd = bench(lambda: sparse_linear_attention(q, k, v, weight, bias, **options), device)

            def sla_step():
                out = sparse_linear_attention(*leaves, **options)
                torch.autograd.grad(out, leaves, dout)

            sla_fwdbwd = bench(sla_step, device)
            row = {
                "frames": frames, "L": length, "kh": kh, "kl": args.kl,
                "dense_fwd_ms": dense_fwd, "dense_fwdbwd_ms": dense_fwdbwd, "dense_fwd_tflops": dense_rate,
                "sla_fwd_ms": sla_fwd, "sla_fwdbwd_ms": sla_fwdbwd,
                "speedup_fwd": dense_fwd / sla_fwd, "speedup_fwdbwd": dense_fwdbwd / sla_fwdbwd,
            }
            if device == "cuda":
                out = sparse_linear_attention(q, k, v, weight, bias, **options)
                stages = stage_times(q, k, v, weight, bias, dout, out, kh, args.kl, args.block_q, args.block_k,
                                     args.feature_map, device)
                flops = sla_flops(length, heads, dim, kh, args.block_q, args.block_k)
                row["stages_ms"] = stages
                row["kernel_tflops"] = {
                    name: flops[name] / stages[name] / 1e9
                    for name in ("forward_kernel", "backward_query_kernel", "backward_key_kernel")
                }
            if frames in args.check_frames:
                row["rel_error"] = check_error(q, k, v, weight, bias, dout, kh, args.kl, args.block_q,
                                               args.block_k, args.feature_map, backend)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del q, k, v, dout, leaves
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "dtype": args.dtype, "heads": heads, "head_dim": dim, "rows": rows, "tuning": tuning}


def table(result: dict) -> str:
    lines = [
        f"device: {result['device']}, torch {result['torch']}, {result['dtype']}, {result['heads']} heads x "
        f"D={result['head_dim']}",
        "| frames | L | kh | dense fwd ms | SLA fwd ms | fwd x | dense f+b ms | SLA f+b ms | f+b x "
        "| fused fwd TFLOP/s | dense TFLOP/s | rel err out / dq |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rate = r.get("kernel_tflops", {}).get("forward_kernel", float("nan"))
        err = r.get("rel_error", {})
        lines.append(
            f"| {r['frames']} | {r['L']} | {r['kh']:.2f} | {r['dense_fwd_ms']:.2f} | {r['sla_fwd_ms']:.3f} | "
            f"{r['speedup_fwd']:.1f} | {r['dense_fwdbwd_ms']:.2f} | {r['sla_fwdbwd_ms']:.3f} | "
            f"{r['speedup_fwdbwd']:.1f} | {rate:.0f} | {r['dense_fwd_tflops']:.0f} | "
            f"{err.get('out', float('nan')):.1e} / {err.get('dq', float('nan')):.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 64, 100])
    parser.add_argument("--kh", type=float, nargs="+", default=[0.05, 0.10, 0.20])
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tokens-per-frame", type=int, default=TOKENS_PER_FRAME)
    parser.add_argument("--block-q", type=int, default=64)
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--feature-map", default="softmax")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--check-frames", type=int, nargs="*", default=[8, 32],
                        help="frame counts at which to check the error against the reference")
    parser.add_argument("--tune", action="store_true",
                        help="also time the kernels under several launch configurations (first frames, first kh)")
    parser.add_argument("--out", help="write the full results as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, reference backend, tiny sizes: checks that the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.frames, args.kh, args.heads, args.tokens_per_frame = [2], [0.25], 2, 100
        args.check_frames, args.dtype = [2], "fp32"
    result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
