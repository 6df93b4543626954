"""exp2 of the SLA forward kernel's scores partly on the FMA pipe (FlashAttention-4's trick), at VGGT-1B's global
attention (16 heads x D 64, 1374 tokens per 518² frame, kh 5 %, kl 10 %, bf16), launched alone (median of 20).

At head dim 64 a 64x64 step costs the tensor cores 64·64·64·2 MACs (256 cycles of an SM at 2048 MACs/cycle) and
the special-function unit 4096 exponentials (256 cycles at 16/cycle): the exponentials may bound the kernel as
much as the MMAs do. Here every second score's exp2 (or every one) is a polynomial on the FMA pipe instead
(inline PTX, two elements per call). Outputs are compared with the shipped kernel's.

    PYTHONPATH=src python3 benchmarks/bench_sla_exp2.py --frames 32 100 --out exp2.json    # CUDA
"""

from __future__ import annotations

import argparse
import json
import struct

import torch
import triton
import triton.language as tl

from lite3r.bench.measure import time_call, write_results
from lite3r.sla import kernels

HEADS, DIM, TOKENS_PER_FRAME, BLOCK = 16, 64, 37 * 37 + 5, 64


C3 = (0.9999280571937561, 0.6932609677314758, 0.2426111251115799, 0.055171649903059006)  # rel. error 7.5e-5
C5 = (1.0000001192092896, 0.6931469440460205, 0.24022120237350464, 0.05550713464617729, 0.009675540961325169,
      0.0013276470126584172)  # rel. error 2.4e-7 on [-0.5, 0.5]


def _hex(value: float) -> str:
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", value))[0]


def _poly_exp2(dst: str, src: str, coeffs) -> list[str]:
    """2^x = 2^round(x) * p(x - round(x)): the rounding by the 1.5 * 2^23 trick, 2^j added to p's exponent bits
    (x clamped to -126 so that the exponent field stays non-negative)."""
    horner = [f"fma.rn.f32 p, f, {_hex(coeffs[-1])}, {_hex(coeffs[-2])};"]
    horner += [f"fma.rn.f32 p, p, f, {_hex(c)};" for c in reversed(coeffs[:-2])]
    return ["max.f32 x, %s, 0fC2FC0000;" % src, "add.rn.f32 t, x, 0f4B400000;", "sub.rn.f32 m, t, 0f4B400000;",
            "sub.rn.f32 f, x, m;", *horner, "mov.b32 ib, t;", "shl.b32 ib, ib, 23;", "mov.b32 pb, p;",
            "add.s32 pb, pb, ib;", f"mov.b32 {dst}, pb;"]


def _asm(coeffs, both: bool) -> str:
    first = _poly_exp2("$0", "$2", coeffs) if both else ["ex2.approx.ftz.f32 $0, $2;"]
    return " ".join(["{", ".reg .f32 x, t, m, f, p;", ".reg .b32 ib, pb;", *first, *_poly_exp2("$1", "$3", coeffs), "}"])


HALF3: tl.constexpr = tl.constexpr(_asm(C3, False))
HALF5: tl.constexpr = tl.constexpr(_asm(C5, False))
ALL3: tl.constexpr = tl.constexpr(_asm(C3, True))


@triton.jit
def _exp2(x, MODE: tl.constexpr):
    """exp2 of a tile: MODE 0 MUFU only; 3 / 5: every second element by a degree-3 / 5 polynomial on the FMA
    pipe; 13: every element by the degree-3 polynomial."""
    if MODE == 0:
        return tl.exp2(x)
    elif MODE == 3:
        return tl.inline_asm_elementwise(HALF3, "=f,=f,f,f", [x], dtype=tl.float32, is_pure=True, pack=2)
    elif MODE == 5:
        return tl.inline_asm_elementwise(HALF5, "=f,=f,f,f", [x], dtype=tl.float32, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(ALL3, "=f,=f,f,f", [x], dtype=tl.float32, is_pure=True, pack=2)


@triton.jit
def _attend_block(q, K_BASE, stride_kl, V_BASE, stride_vl, kblock, seq_len, row_max, row_sum, acc, qk_scale,
                  BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, MODE: tl.constexpr):
    keys = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)
    if MASKED:
        key_ok = keys < seq_len
        k = tl.load(K_BASE + keys[:, None] * stride_kl + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.where(key_ok[None, :], tl.dot(q, tl.trans(k)), float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - new_max[:, None])
    else:
        k = tl.load(K_BASE + keys[:, None] * stride_kl + dims[None, :])
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :])
        s = tl.dot(q, tl.trans(k))
        new_max = tl.maximum(row_max, tl.max(s, 1) * qk_scale)
        p = _exp2(s * qk_scale - new_max[:, None], MODE)
    alpha = tl.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return new_max, row_sum, acc


@triton.jit
def exp2_forward_kernel(
    Q, K, V, OUT, LUT, KV_STATE, K_STATE, W, BIAS,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    num_heads, seq_len, num_critical, sm_scale, eps,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    MODE: tl.constexpr,
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
    for t in range(0, num_critical - 1):
        row_max, row_sum, acc = _attend_block(q, k_base, stride_kl, v_base, stride_vl, tl.load(lut + t), seq_len,
                                              row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, False, MODE)
    row_max, row_sum, acc = _attend_block(q, k_base, stride_kl, v_base, stride_vl, tl.load(lut + num_critical - 1),
                                          seq_len, row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, True, MODE)
    out = acc / row_sum[:, None]
    _, _, _, _, linear_out = kernels._linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM, FEATURE_MAP)
    w = tl.load(W + dims[:, None] * HEAD_DIM + dims[None, :]).to(q.dtype)
    out += tl.dot(linear_out.to(q.dtype), tl.trans(w)) + tl.load(BIAS + dims).to(tl.float32)[None, :]
    tl.store(OUT + b.to(tl.int64) * stride_ob + h * stride_oh + rows[:, None] * stride_ol + dims[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


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
        for warps, stages in ((4, 2),):
            launches[f"shipped, {warps} warps, {stages} stages"] = lambda w=warps, s=stages: _launch_shipped(
                q, k, v, weight, bias, pre, w, s)
        for mode in (0, 3, 5, 13):
            for warps, stages in ((4, 2), (4, 3)):
                def variant(mode=mode, warps=warps, stages=stages):
                    out = torch.empty_like(reference)
                    exp2_forward_kernel[(kernels.num_blocks(length, BLOCK), HEADS)](
                        q, k, v, out, critical, pre.kv_state, pre.k_state, weight, bias, *strides,
                        HEADS, length, critical.shape[-1], DIM**-0.5, kernels.LINEAR_EPS, HEAD_DIM=DIM, BLOCK_Q=BLOCK,
                        BLOCK_K=BLOCK, FEATURE_MAP=kernels._feature_code("softmax"), MODE=mode, num_warps=warps,
                        num_stages=stages,
                    )
                    return out

                launches[f"exp2 mode {mode}, {warps} warps, {stages} stages"] = variant
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
