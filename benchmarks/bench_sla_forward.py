"""Candidate forms of the SLA forward kernel against ``lite3r.sla.kernels.forward_kernel``, at VGGT-1B's global
attention (16 heads x D 64, 1374 tokens per 518² frame, kh 5 %, kl 10 %, bf16), launched alone (median of 20).

The candidate (``peeled_forward_kernel``) changes only the inner loop:
- the critical LUT is ascending (``classify``), so only its last entry can be the partial key block at the end
  of the sequence: every other step loads K / V without masks and scores without a select;
- scores are scaled inside the exponent (``exp2(s * c - m)``: one FMA per score) and P V accumulates into the
  rescaled accumulator inside the MMA (``tl.dot(p, v, acc)``), as the Triton attention tutorial does;
- optionally ``tl.range(..., warp_specialize=True)`` (Triton's automatic warp specialisation).
Every launch's output is compared with the shipped kernel's.

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
def _attend_block(q, K_BASE, stride_kl, V_BASE, stride_vl, kblock, seq_len, row_max, row_sum, acc, qk_scale,
                  BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    keys = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)
    if MASKED:
        key_ok = keys < seq_len
        k = tl.load(K_BASE + keys[:, None] * stride_kl + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.where(key_ok[None, :], tl.dot(q, tl.trans(k)), float("-inf"))
    else:
        k = tl.load(K_BASE + keys[:, None] * stride_kl + dims[None, :])
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :])
        s = tl.dot(q, tl.trans(k))
    new_max = tl.maximum(row_max, tl.max(s, 1) * qk_scale)
    p = tl.exp2(s * qk_scale - new_max[:, None])
    alpha = tl.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return new_max, row_sum, acc


@triton.jit
def peeled_forward_kernel(
    Q, K, V, OUT, LUT, KV_STATE, K_STATE, W, BIAS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    num_heads, seq_len, num_critical, sm_scale, eps,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    sm_scale, eps = tl.cast(sm_scale, tl.float32), tl.cast(eps, tl.float32)
    qblock = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    state = bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK_Q) + qblock
    rows = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < seq_len
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + rows[:, None] * stride_ql + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh
    lut = LUT + state * num_critical
    qk_scale = sm_scale * 1.4426950408889634
    row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    for t in tl.range(0, num_critical - 1, warp_specialize=WARP_SPECIALIZE):
        row_max, row_sum, acc = _attend_block(q, k_base, stride_kl, v_base, stride_vl, tl.load(lut + t), seq_len,
                                              row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, False)
    row_max, row_sum, acc = _attend_block(q, k_base, stride_kl, v_base, stride_vl, tl.load(lut + num_critical - 1),
                                          seq_len, row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, True)
    out = acc / row_sum[:, None]
    _, _, _, _, linear_out = kernels._linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM, FEATURE_MAP)
    w = tl.load(W + dims[:, None] * HEAD_DIM + dims[None, :]).to(q.dtype)
    out += tl.dot(linear_out.to(q.dtype), tl.trans(w)) + tl.load(BIAS + dims).to(tl.float32)[None, :]
    tl.store(OUT + b.to(tl.int64) * stride_ob + h * stride_oh + rows[:, None] * stride_ol + dims[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


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
        for ws in (False, True):
            for warps, stages in ((4, 2), (4, 3), (4, 4), (8, 3)):
                def peeled(ws=ws, warps=warps, stages=stages):
                    out = torch.empty_like(reference)
                    peeled_forward_kernel[(kernels.num_blocks(length, BLOCK), HEADS)](
                        q, k, v, out, critical, pre.kv_state, pre.k_state, weight, bias, *strides,
                        HEADS, length, critical.shape[-1], DIM**-0.5, kernels.LINEAR_EPS, HEAD_DIM=DIM, BLOCK_Q=BLOCK,
                        BLOCK_K=BLOCK, FEATURE_MAP=kernels._feature_code("softmax"), WARP_SPECIALIZE=ws,
                        num_warps=warps, num_stages=stages,
                    )
                    return out

                launches[f"peeled{' ws' if ws else ''}, {warps} warps, {stages} stages"] = peeled
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
