"""Candidate forms of the SLA forward kernel against ``lite3r.sla.kernels.forward_kernel``, at VGGT-1B's global
attention (16 heads x D 64, 1374 tokens per 518² frame, kh 5 %, kl 10 %, bf16), launched alone (median of 20).

- the shipped kernel with other warps / stages;
- ``paired_forward_kernel``: two query blocks per program, their steps (``kernels._attend_block``) interleaved,
  so that one block's softmax can overlap the other's matrix products.
Every launch's output is compared with the shipped kernel's. The first candidate measured here, the peeled
loop (unmasked steps, scores scaled inside the exponent, P V into the accumulator), became the shipped kernel
(13.04 -> 11.80 ms at 100 frames, H200, 2026-12-01); Triton 3.6's automatic warp specialisation of that loop
failed to compile with 4 warps and ran 3x slower with 8.

    PYTHONPATH=src python3 benchmarks/bench_sla_forward.py --frames 32 100 --out forward.json    # CUDA
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

from lite3r.bench.measure import time_call, write_results
from lite3r.sla import kernels

HEADS, DIM, TOKENS_PER_FRAME, BLOCK = 16, 64, 37 * 37 + 5, 64


@triton.jit
def _query_tile(Q, stride_ql, qblock, seq_len, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr):
    rows = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    return tl.load(Q + rows[:, None] * stride_ql + tl.arange(0, HEAD_DIM)[None, :], mask=(rows < seq_len)[:, None],
                   other=0.0)


@triton.jit
def _finish(q, acc, row_sum, state, qblock, OUT, stride_ol, KV_STATE, K_STATE, W, BIAS, seq_len, eps,
            BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr, FEATURE_MAP: tl.constexpr):
    dims = tl.arange(0, HEAD_DIM)
    rows = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    out = acc / row_sum[:, None]
    _, _, _, _, linear_out = kernels._linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM, FEATURE_MAP)
    w = tl.load(W + dims[:, None] * HEAD_DIM + dims[None, :]).to(q.dtype)
    out += tl.dot(linear_out.to(q.dtype), tl.trans(w)) + tl.load(BIAS + dims).to(tl.float32)[None, :]
    tl.store(OUT + rows[:, None] * stride_ol + dims[None, :], out.to(OUT.dtype.element_ty),
             mask=(rows < seq_len)[:, None])


@triton.jit
def paired_forward_kernel(
    Q, K, V, OUT, LUT, KV_STATE, K_STATE, W, BIAS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    num_heads, seq_len, num_critical, sm_scale, eps,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
):
    """Two query blocks per program, their steps interleaved (two independent MMA / softmax chains); an odd
    last block is computed twice and stored twice with the same values."""
    sm_scale, eps = tl.cast(sm_scale, tl.float32), tl.cast(eps, tl.float32)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    num_qblocks = tl.cdiv(seq_len, BLOCK_Q)
    qa = 2 * tl.program_id(0)
    qb = tl.minimum(qa + 1, num_qblocks - 1)
    state_a = bh.to(tl.int64) * num_qblocks + qa
    state_b = bh.to(tl.int64) * num_qblocks + qb
    q_base = Q + b.to(tl.int64) * stride_qb + h * stride_qh
    q_a = _query_tile(q_base, stride_ql, qa, seq_len, BLOCK_Q, HEAD_DIM)
    q_b = _query_tile(q_base, stride_ql, qb, seq_len, BLOCK_Q, HEAD_DIM)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh
    lut_a = LUT + state_a * num_critical
    lut_b = LUT + state_b * num_critical
    qk_scale = sm_scale * 1.4426950408889634
    max_a = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    sum_a = tl.zeros([BLOCK_Q], tl.float32)
    acc_a = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    max_b, sum_b, acc_b = max_a, sum_a, acc_a
    for t in range(0, num_critical - 1):
        max_a, sum_a, acc_a = kernels._attend_block(q_a, k_base, stride_kl, K, 1.0, v_base, stride_vl,
                                                    tl.load(lut_a + t), seq_len, max_a, sum_a, acc_a, qk_scale,
                                                    BLOCK_K, HEAD_DIM, False, False)
        max_b, sum_b, acc_b = kernels._attend_block(q_b, k_base, stride_kl, K, 1.0, v_base, stride_vl,
                                                    tl.load(lut_b + t), seq_len, max_b, sum_b, acc_b, qk_scale,
                                                    BLOCK_K, HEAD_DIM, False, False)
    last = num_critical - 1
    max_a, sum_a, acc_a = kernels._attend_block(q_a, k_base, stride_kl, K, 1.0, v_base, stride_vl,
                                                tl.load(lut_a + last), seq_len, max_a, sum_a, acc_a, qk_scale,
                                                BLOCK_K, HEAD_DIM, False, True)
    max_b, sum_b, acc_b = kernels._attend_block(q_b, k_base, stride_kl, K, 1.0, v_base, stride_vl,
                                                tl.load(lut_b + last), seq_len, max_b, sum_b, acc_b, qk_scale,
                                                BLOCK_K, HEAD_DIM, False, True)
    out_base = OUT + b.to(tl.int64) * stride_ob + h * stride_oh
    _finish(q_a, acc_a, sum_a, state_a, qa, out_base, stride_ol, KV_STATE, K_STATE, W, BIAS, seq_len, eps,
            BLOCK_Q, HEAD_DIM, FEATURE_MAP)
    _finish(q_b, acc_b, sum_b, state_b, qb, out_base, stride_ol, KV_STATE, K_STATE, W, BIAS, seq_len, eps,
            BLOCK_Q, HEAD_DIM, FEATURE_MAP)


def _launch_shipped(q, k, v, weight, bias, pre, warps, stages):
    out = torch.empty_like(q)
    critical = pre.blocks.critical
    kernels.forward_kernel[(kernels.num_blocks(q.shape[2], BLOCK), q.shape[1])](
        q, k, v, out, critical, pre.kv_state, pre.k_state, weight, bias, q, q, k, k,
        *kernels._strides(q), *kernels._strides(k), *kernels._strides(v), *kernels._strides(out),
        q.shape[1], q.shape[2], critical.shape[-1], DIM**-0.5, kernels.LINEAR_EPS, HEAD_DIM=DIM, BLOCK_Q=BLOCK,
        BLOCK_K=BLOCK, FEATURE_MAP=kernels._feature_code("softmax"), QUANTIZED_QK=False,
        num_warps=warps, num_stages=stages,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--layout", choices=["qkv", "contiguous"], default="qkv",
                        help="qkv: q, k, v as views of one [B, L, 3, H, D] tensor, as the model makes them")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for frames in args.frames:
        length = frames * TOKENS_PER_FRAME
        torch.manual_seed(0)
        if args.layout == "qkv":
            qkv = torch.randn(1, length, 3, HEADS, DIM, device=device, dtype=torch.bfloat16)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (torch.randn(1, HEADS, length, DIM, device=device, dtype=torch.bfloat16) for _ in range(3))
        weight, bias = torch.randn(DIM, DIM, device=device) * 0.05, torch.randn(DIM, device=device) * 0.05
        pre = kernels.precompute(q, k, v, 0.05, 0.10, BLOCK, BLOCK, "softmax")
        critical = pre.blocks.critical
        reference = kernels.launch_forward(q, k, v, weight, bias, pre, BLOCK, BLOCK, "softmax")
        strides = (*kernels._strides(q), *kernels._strides(k), *kernels._strides(v), *kernels._strides(reference))
        launches = {"shipped": lambda: kernels.launch_forward(q, k, v, weight, bias, pre, BLOCK, BLOCK, "softmax")}
        for warps, stages in ((4, 2), (4, 4)):
            launches[f"shipped, {warps} warps, {stages} stages"] = lambda w=warps, s=stages: _launch_shipped(
                q, k, v, weight, bias, pre, w, s)
        for warps, stages in ((4, 2), (4, 3), (8, 2), (8, 3)):
            def paired(warps=warps, stages=stages):
                out = torch.empty_like(reference)
                paired_forward_kernel[(kernels.num_blocks(kernels.num_blocks(length, BLOCK), 2), q.shape[1])](
                    q, k, v, out, critical, pre.kv_state, pre.k_state, weight, bias, *strides,
                    HEADS, length, critical.shape[-1], DIM**-0.5, kernels.LINEAR_EPS, HEAD_DIM=DIM, BLOCK_Q=BLOCK,
                    BLOCK_K=BLOCK, FEATURE_MAP=kernels._feature_code("softmax"), num_warps=warps, num_stages=stages,
                )
                return out

            launches[f"paired, {warps} warps, {stages} stages"] = paired
        for name, launch in launches.items():
            row = {"frames": frames, "layout": args.layout, "launch": name}
            try:
                row["max_abs_diff"] = (launch().float() - reference.float()).abs().max().item()
                row["ms"] = time_call(launch, 20, device, warmup=2).median_ms
            except Exception as e:  # noqa: BLE001 - a launch that does not compile is a result too
                row["failed"] = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(args.out, rows=rows)
    print("\n| frames | launch | ms | max abs diff vs shipped |")
    for r in rows:
        print(f"| {r['frames']} | {r['launch']} | {r.get('ms', r.get('failed'))} | {r.get('max_abs_diff', '-')} |")


if __name__ == "__main__":
    main()
