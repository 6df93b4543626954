"""Triton kernels for Sparse-Linear Attention (forward and backward), one source for CUDA and the interpreter.

Design (docs/sla.md has the reasoning and the numbers):

* The linear branch never re-reads K/V per query block. ``key_state_kernel`` turns every key block ``j`` into
  ``S_j = phi(K_j)^T V_j`` (``[D, D]``) and ``z_j = sum phi(K_j)``; one batched GEMM over the block map,
  ``M = marginal @ S``, gives each query block its marginal state, which the fused kernel loads once.
* ``forward_kernel`` runs FlashAttention-style online softmax over the query block's critical key blocks
  (indices from a LUT), adds ``phi(q) M_i / (phi(q) . z_i + eps)`` projected by ``proj_lin`` in the epilogue,
  and writes ``O`` once.
* The backward recomputes the softmax statistics (one extra ``Q K^T`` pass in ``backward_query_kernel``) so
  that the registered op has a single output. ``backward_query_kernel`` also back-propagates the linear branch
  to ``phi(q)`` and emits ``dM_i``; a GEMM ``marginal^T @ dM`` gives ``dS_j``, which
  ``backward_key_kernel`` folds into ``dK_j, dV_j`` next to the block-sparse ``dK, dV`` (critical query blocks
  of a key block come from a CSR transpose of the LUT).

The ``@triton.jit`` functions take plain pointers, strides and integers with constexpr tile sizes, so they can
be compiled ahead of time (TensorRT plugin). The host wrappers below own allocation and launch only. They
launch through ``torch.library.wrap_triton`` (a plain launch in eager mode) and never branch on the sequence
length, so that ``torch.export`` with a dynamic frame count records the kernels with symbolic sizes
(``lite3r::sparse_linear_attention`` is a ``triton_op``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from torch.library import wrap_triton

from lite3r.sla.reference import (
    FEATURE_MAPS, LINEAR_EPS, BlockMap, block_counts, block_scores, num_blocks, quantize_blocks, smooth_keys,
)



@triton.jit
def _feature_map(x, FEATURE_MAP: tl.constexpr):
    """phi over the last axis of a float32 tile; FEATURE_MAP indexes reference.FEATURE_MAPS."""
    if FEATURE_MAP == 0:
        e = tl.exp(x - tl.max(x, 1)[:, None])
        return e / tl.sum(e, 1)[:, None]
    elif FEATURE_MAP == 1:
        return tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def _feature_map_grad(x, phi, dphi, FEATURE_MAP: tl.constexpr):
    """dL/dx from dL/dphi for the feature maps of ``_feature_map``."""
    if FEATURE_MAP == 0:
        return phi * (dphi - tl.sum(dphi * phi, 1)[:, None])
    elif FEATURE_MAP == 1:
        return tl.where(x > 0, dphi, dphi * phi)
    else:
        return tl.where(x > 0, dphi, 0.0)


@triton.jit
def pool_kernel(
    X, POOLED,
    stride_xb, stride_xh, stride_xl,
    num_heads, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    """Mean of each block of BLOCK tokens over its real tokens -> POOLED fp32 ``[BH, n_blocks, D]``."""
    block = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    rows = block * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, HEAD_DIM)
    x = tl.load(X + b.to(tl.int64) * stride_xb + h * stride_xh + rows[:, None] * stride_xl + dims[None, :],
                mask=rows[:, None] < seq_len, other=0.0)
    count = tl.minimum(seq_len - block * BLOCK, BLOCK)
    out = bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK) + block
    tl.store(POOLED + out * HEAD_DIM + dims, tl.sum(x.to(tl.float32), 0) / count)


@triton.jit
def key_state_kernel(
    K, V, KV_STATE, K_STATE, POOLED_K,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    num_heads, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
):
    """Per key block: ``S_j = phi(K_j)^T V_j`` -> KV_STATE ``[BH, nk, D*D]``, ``z_j = sum phi(K_j)`` -> K_STATE
    ``[BH, nk, D]``, and the block's mean key (for the block map) -> POOLED_K fp32 ``[BH, nk, D]``."""
    kblock = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    keys = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    key_ok = keys < seq_len
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(K + b.to(tl.int64) * stride_kb + h * stride_kh + keys[:, None] * stride_kl + dims[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + h * stride_vh + keys[:, None] * stride_vl + dims[None, :],
                mask=key_ok[:, None], other=0.0)
    k32 = k.to(tl.float32)
    phi = tl.where(key_ok[:, None], _feature_map(k32, FEATURE_MAP), 0.0)
    kv = tl.dot(tl.trans(phi.to(KV_STATE.dtype.element_ty)), v.to(KV_STATE.dtype.element_ty))
    state = (bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK_K) + kblock)
    tl.store(KV_STATE + state * HEAD_DIM * HEAD_DIM + dims[:, None] * HEAD_DIM + dims[None, :],
             kv.to(KV_STATE.dtype.element_ty))
    tl.store(K_STATE + state * HEAD_DIM + dims, tl.sum(phi, 0))
    tl.store(POOLED_K + state * HEAD_DIM + dims, tl.sum(k32, 0) / tl.minimum(seq_len - kblock * BLOCK_K, BLOCK_K))


@triton.jit
def _ordered_chunk(SCORES, row, start, num_kblocks, CHUNK: tl.constexpr):
    """Lanes ``start + [0, CHUNK)`` of one row of scores as order-preserving int32 keys, and which are real."""
    lanes = start + tl.arange(0, CHUNK)
    valid = lanes < num_kblocks
    scores = tl.load(SCORES + row * num_kblocks + lanes, mask=valid, other=0.0) + 0.0  # -0.0 -> +0.0
    bits = scores.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF), valid, lanes  # int order == float order


# Bits per radix digit of the classification's threshold search. SASS instructions per 256-key chunk (sm_90, one
# warp) with Triton 3.6, the H200's: 5,964 / 4,173 / 4,772 for 2 / 4 / 8-bit digits (3.6 builds a histogram from
# warp ballots, padded to 32 bins: 2 x 16 fill it); with 3.9 (shared-memory atomics) 8-bit digits would be fewer.
DIGIT_BITS = tl.constexpr(4)
RADIX = tl.constexpr(1 << DIGIT_BITS.value)  # module level: the interpreter fails on ``int << constexpr``


@triton.jit
def classify_kernel(
    SCORES, CLASSES, LUT, MARGINAL,
    num_kblocks, marginal_cols, n_critical, n_negligible,
    CHUNK: tl.constexpr,
):
    """``reference.classify_blocks`` for one query block (row of SCORES ``[BH*nq, nk]`` fp32), without a sort.

    Rank order is score descending, ties to the lower index. A radix select over the scores' order-preserving
    keys (8 passes of 4-bit digits) finds the n_critical-th largest key (top) and the max(n_negligible, 1)-th
    smallest (bottom; unused when n_negligible is 0): each pass builds one ``tl.histogram`` of the next digit
    of the keys that share each threshold's prefix so far (RADIX bins for top, RADIX for bottom; once the
    prefixes differ no key matches both, and while they are equal bottom reads top's bins), and a cumulative sum
    picks each threshold's digit and the rank still to find. Ties at the thresholds are then split by index with
    prefix sums. Writes CLASSES (int8), the ascending critical LUT (int32) and the row of the 0/1 marginal
    matrix MARGINAL ``[BH*nq, marginal_cols]`` for the GEMMs (columns past nk only align rows and are never
    read). The row is read in chunks of CHUNK key blocks (9 times in all; the binary search this replaced read
    it 34 times and was 1.9x slower at nk 2,147 on the H200), so one compiled kernel serves any nk (an exported
    graph with a dynamic frame count). CHUNK >= 32 * num_warps, so that no key is held by two threads: Triton
    3.6 and 3.9 lower tl.histogram differently, and neither is relied on to count a replicated key once.
    """
    row = tl.program_id(0).to(tl.int64)
    bins = tl.arange(0, 2 * RADIX)
    digits = bins & (RADIX - 1)
    top_bins = bins < RADIX

    top_prefix = tl.zeros([], tl.int32)  # the thresholds' unsigned keys, digit by digit from the top
    bottom_prefix = tl.zeros([], tl.int32)
    top_need = n_critical + tl.zeros([], tl.int32)  # rank still to find among keys matching the prefix
    bottom_need = tl.maximum(n_negligible, 1) + tl.zeros([], tl.int32)
    bottom_ties_total = tl.zeros([], tl.int32)
    for p in tl.static_range(32 // DIGIT_BITS):
        shift = 32 - DIGIT_BITS * (p + 1)  # a constexpr, as p is
        hist = tl.zeros([2 * RADIX], tl.int32)
        for start in range(0, num_kblocks, CHUNK):
            ordered, valid, _lanes = _ordered_chunk(SCORES, row, start, num_kblocks, CHUNK)
            key = ordered ^ -2147483648  # sign bit flipped: its unsigned order is the float order
            digit = (key >> shift) & (RADIX - 1)
            if p == 0:  # empty prefixes: every key matches both
                hist += tl.histogram(digit, 2 * RADIX, mask=valid)
            else:
                high = key & -(RADIX << shift)  # the bits the prefixes already fix
                in_top = high == top_prefix
                in_bottom = (high == bottom_prefix) & ~in_top
                hist += tl.histogram(tl.where(in_top, digit, digit + RADIX), 2 * RADIX,
                                     mask=valid & (in_top | in_bottom))

        top_hist = tl.where(top_bins, hist, 0)
        at_or_above = tl.sum(top_hist, 0) - tl.cumsum(top_hist, 0) + top_hist
        top_digit = tl.max(tl.where(top_bins & (at_or_above >= top_need), digits, 0), 0)
        top_need -= tl.sum(tl.where(top_bins & (digits > top_digit), hist, 0), 0)

        bottom_bins = top_bins == (top_prefix == bottom_prefix)
        bottom_hist = tl.where(bottom_bins, hist, 0)
        at_or_below = tl.cumsum(bottom_hist, 0)
        bottom_digit = tl.min(tl.where(bottom_bins & (at_or_below >= bottom_need), digits, RADIX - 1), 0)
        bottom_need -= tl.sum(tl.where(bottom_bins & (digits < bottom_digit), hist, 0), 0)
        bottom_ties_total = tl.sum(tl.where(bottom_bins & (digits == bottom_digit), hist, 0), 0)  # last pass's

        top_prefix |= top_digit << shift
        bottom_prefix |= bottom_digit << shift

    # top_need / bottom_need are now the ties each threshold still takes; the thresholds as _ordered_chunk's keys.
    top_lo = top_prefix ^ -2147483648
    bottom_hi = bottom_prefix ^ -2147483648
    top_ties_before = tl.zeros([], tl.int32)
    bottom_ties_before = tl.zeros([], tl.int32)
    critical_before = tl.zeros([], tl.int32)
    for start in range(0, num_kblocks, CHUNK):
        ordered, valid, lanes = _ordered_chunk(SCORES, row, start, num_kblocks, CHUNK)
        top_ties = valid & (ordered == top_lo)
        top_rank = top_ties_before + tl.cumsum(top_ties.to(tl.int32), 0)  # 1-based among ties, lower index first
        critical = (valid & (ordered > top_lo)) | (top_ties & (top_rank <= top_need))
        bottom_ties = valid & (ordered == bottom_hi)
        # Bottom ties rank from the end.
        bottom_rank = bottom_ties_total - bottom_ties_before - tl.cumsum(bottom_ties.to(tl.int32), 0) + 1
        negligible = (valid & (ordered < bottom_hi)) | (bottom_ties & (bottom_rank <= bottom_need))
        negligible &= n_negligible > 0

        classes = tl.where(critical, 1, tl.where(negligible, -1, 0)).to(tl.int8)
        tl.store(CLASSES + row * num_kblocks + lanes, classes, mask=valid)
        marginal = tl.where(critical | negligible, 0.0, 1.0).to(MARGINAL.dtype.element_ty)
        tl.store(MARGINAL + row * marginal_cols + lanes, marginal, mask=valid)
        position = critical_before + tl.cumsum(critical.to(tl.int32), 0) - 1
        tl.store(LUT + row * n_critical + position, lanes, mask=critical)
        top_ties_before += tl.sum(top_ties.to(tl.int32), 0)
        bottom_ties_before += tl.sum(bottom_ties.to(tl.int32), 0)
        critical_before += tl.sum(critical.to(tl.int32), 0)


@triton.jit
def marginal_sum_kernel(
    MASK, STATE, OUT,
    stride_mb, stride_mm, stride_mk,
    rows, cols, depth,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``OUT[b] = MASK[b] @ STATE[b]`` (fp32 accumulation) for the 0/1 marginal matrix: ``M = marginal @ S``
    forward, ``dS = marginal^T @ dM`` backward (MASK's strides describe the transpose).

    STATE ``[batch, depth, cols]`` and OUT ``[batch, rows, cols]`` are contiguous.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, depth, BLOCK_K):
        ks = start + offs_k
        mask = tl.load(MASK + batch * stride_mb + offs_m[:, None] * stride_mm + ks[None, :] * stride_mk,
                       mask=(offs_m[:, None] < rows) & (ks[None, :] < depth), other=0.0)
        state = tl.load(STATE + (batch * depth + ks[:, None]) * cols + offs_n[None, :],
                        mask=(ks[:, None] < depth) & (offs_n[None, :] < cols), other=0.0)
        acc += tl.dot(mask.to(state.dtype), state)
    tl.store(OUT + (batch * rows + offs_m[:, None]) * cols + offs_n[None, :], acc.to(OUT.dtype.element_ty),
             mask=(offs_m[:, None] < rows) & (offs_n[None, :] < cols))


@triton.jit
def _gather_blocks(INDEX, t, end, seq_len, BLOCK: tl.constexpr, STEP_BLOCKS: tl.constexpr):
    """Token positions of the blocks ``INDEX[t]`` (and ``INDEX[t + 1]`` when STEP_BLOCKS == 2, unless
    ``t + 1 >= end``) and which of them are real tokens. Two blocks per step make wider matrix products; the
    indices are scalar loads so the compiler sees contiguous runs of tokens."""
    lanes = tl.arange(0, BLOCK * STEP_BLOCKS)
    first = tl.load(INDEX + t)
    if STEP_BLOCKS == 1:
        tokens = first * BLOCK + lanes
        return tokens, tokens < seq_len
    else:
        second = tl.load(INDEX + tl.minimum(t + 1, end - 1))  # a repeat of the last entry when there is none
        in_first = lanes < BLOCK
        tokens = tl.where(in_first, first * BLOCK + lanes, second * BLOCK + lanes - BLOCK)
        return tokens, (tokens < seq_len) & (in_first | (t + 1 + 0 * lanes < end))


@triton.jit
def _linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM: tl.constexpr, FEATURE_MAP: tl.constexpr):
    """phi(q), the query block's marginal state (M_i, z_i) and O_l = phi(q) M_i / (phi(q) . z_i + eps)."""
    dims = tl.arange(0, HEAD_DIM)
    phi = _feature_map(q.to(tl.float32), FEATURE_MAP)
    kv = tl.load(KV_STATE + state * HEAD_DIM * HEAD_DIM + dims[:, None] * HEAD_DIM + dims[None, :])
    z = tl.load(K_STATE + state * HEAD_DIM + dims)
    denominator = tl.sum(phi * z[None, :], 1) + eps
    out = tl.dot(phi.to(kv.dtype), kv) / denominator[:, None]
    return phi, kv, z, denominator, out


@triton.jit
def _attend_block(q_scored, K_SCORED, k_scored_stride, k_scales, q_scale, V_BASE, stride_vl, kblock, seq_len,
                  row_max, row_sum, acc, qk_scale, BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr,
                  QUANTIZED_QK: tl.constexpr, MASKED: tl.constexpr):
    """One online-softmax step over key block ``kblock``; MASKED for the sequence's partial last block only."""
    keys = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, HEAD_DIM)
    key_ok = keys < seq_len
    if MASKED:
        k = tl.load(K_SCORED + keys[:, None] * k_scored_stride + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :], mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(K_SCORED + keys[:, None] * k_scored_stride + dims[None, :])
        v = tl.load(V_BASE + keys[:, None] * stride_vl + dims[None, :])
    s = tl.dot(q_scored, tl.trans(k))  # int8 codes: int32, exact
    if QUANTIZED_QK:
        s = s * (q_scale * tl.load(k_scales + kblock))
    if MASKED:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(s, 1) * qk_scale)  # qk_scale > 0
    p = tl.exp2(s * qk_scale - new_max[:, None])  # one FMA per score
    alpha = tl.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return new_max, row_sum, acc


@triton.jit
def forward_kernel(
    Q, K, V, OUT, LUT, KV_STATE, K_STATE, W, BIAS, Q_CODES, Q_SCALES, K_CODES, K_SCALES,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    num_heads, seq_len, num_critical, sm_scale, eps,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    QUANTIZED_QK: tl.constexpr,
):
    """One query block: online softmax over its critical key blocks + proj_lin(linear branch).

    LUT rows must be ascending (``classify``, the reference and the ONNX graph all write them so): only the
    last entry can then be the partial block at the end of the sequence, and every other step runs without
    masks (9-15 % faster on the H200: benchmarks/RESULTS.md, eleventh session).

    QUANTIZED_QK: Q K^T on 8-bit tensor cores, from int8 or e4m3 codes of q and smoothed k with one float32 scale
    per block (``reference.quantize_blocks``; int32 / fp32 accumulation); P V, the linear branch and proj_lin as
    without. Without it the *_CODES / *_SCALES pointers are not read (pass any tensor).
    """
    # Inductor passes Python floats to a user kernel as fp64: cast, or fp32 loop state turns fp64.
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
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh
    if QUANTIZED_QK:  # codes: contiguous [B, H, blocks * BLOCK, D], zero-padded; scales: [B * H, blocks]
        q_scored = tl.load(Q_CODES + state * BLOCK_Q * HEAD_DIM + tl.arange(0, BLOCK_Q)[:, None] * HEAD_DIM
                           + dims[None, :])
        q_scale = tl.load(Q_SCALES + state)
        k_scored_base = K_CODES + bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK_K) * BLOCK_K * HEAD_DIM
        k_scored_stride = HEAD_DIM
        k_scales = K_SCALES + bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK_K)
    else:
        q_scored = q
        q_scale = 1.0
        k_scored_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
        k_scored_stride = stride_kl
        k_scales = K_SCALES
    qk_scale = sm_scale * 1.4426950408889634  # exp2 domain
    lut = LUT + state * num_critical

    row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    for t in range(0, num_critical - 1):
        row_max, row_sum, acc = _attend_block(
            q_scored, k_scored_base, k_scored_stride, k_scales, q_scale, v_base, stride_vl, tl.load(lut + t),
            seq_len, row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, QUANTIZED_QK, False,
        )
    row_max, row_sum, acc = _attend_block(
        q_scored, k_scored_base, k_scored_stride, k_scales, q_scale, v_base, stride_vl, tl.load(lut + num_critical - 1),
        seq_len, row_max, row_sum, acc, qk_scale, BLOCK_K, HEAD_DIM, QUANTIZED_QK, True,
    )
    out = acc / row_sum[:, None]

    _, _, _, _, linear_out = _linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM, FEATURE_MAP)
    w = tl.load(W + dims[:, None] * HEAD_DIM + dims[None, :]).to(q.dtype)  # proj_lin.weight [out, in]
    out += tl.dot(linear_out.to(q.dtype), tl.trans(w)) + tl.load(BIAS + dims).to(tl.float32)[None, :]
    tl.store(OUT + b.to(tl.int64) * stride_ob + h * stride_oh + rows[:, None] * stride_ol + dims[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def backward_query_kernel(
    Q, K, V, OUT, DOUT, LUT, KV_STATE, K_STATE, W, BIAS,
    DQ, LSE, DELTA, DKV_STATE, DK_STATE, LINEAR_OUT,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_db, stride_dh, stride_dl,
    stride_lb, stride_lh, stride_ll,
    num_heads, seq_len, num_critical, sm_scale, eps,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    STEP_BLOCKS: tl.constexpr,
):
    """One query block: dQ (sparse + linear), the softmax statistics and delta for ``backward_key_kernel``,
    dM_i / dz_i of the linear branch, and O_l (for proj_lin's weight gradient).

    DQ is contiguous ``[B, H, L, D]``, LSE and DELTA ``[BH, L]``; DOUT's strides are stride_d*, LINEAR_OUT's stride_l*.
    """
    # Inductor passes Python floats to a user kernel as fp64: cast, or fp32 loop state turns fp64.
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
    out = tl.load(OUT + b.to(tl.int64) * stride_ob + h * stride_oh + rows[:, None] * stride_ol + dims[None, :],
                  mask=row_ok[:, None], other=0.0)
    # Padding rows get dout = 0, which zeroes their share of every gradient below.
    dout = tl.load(DOUT + b.to(tl.int64) * stride_db + h * stride_dh + rows[:, None] * stride_dl + dims[None, :],
                   mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh
    dense_rows = bh.to(tl.int64) * seq_len + rows

    # Linear branch: out = O_s + O_l W^T + bias, O_l = num / den.
    phi, kv, z, denominator, linear_out = _linear_branch(q, state, KV_STATE, K_STATE, eps, HEAD_DIM, FEATURE_MAP)
    w = tl.load(W + dims[:, None] * HEAD_DIM + dims[None, :]).to(q.dtype)
    bias = tl.load(BIAS + dims).to(tl.float32)
    d_linear = tl.dot(dout, w)
    d_linear_dot_out = tl.sum(d_linear * linear_out, 1)
    d_numerator = d_linear / denominator[:, None]
    d_denominator = -d_linear_dot_out / denominator
    d_phi = tl.dot(d_numerator.to(kv.dtype), tl.trans(kv)) + d_denominator[:, None] * z[None, :]
    d_kv = tl.dot(tl.trans(phi.to(kv.dtype)), d_numerator.to(kv.dtype))
    tl.store(DKV_STATE + state * HEAD_DIM * HEAD_DIM + dims[:, None] * HEAD_DIM + dims[None, :],
             d_kv.to(DKV_STATE.dtype.element_ty))
    tl.store(DK_STATE + state * HEAD_DIM + dims, tl.sum(phi * d_denominator[:, None], 0))
    tl.store(LINEAR_OUT + b.to(tl.int64) * stride_lb + h * stride_lh + rows[:, None] * stride_ll + dims[None, :],
             linear_out.to(LINEAR_OUT.dtype.element_ty), mask=row_ok[:, None])
    dq = _feature_map_grad(q.to(tl.float32), phi, d_phi, FEATURE_MAP)

    # delta = rowsum(dO * O_s), with O_s = out - O_l W^T - bias.
    dout32 = dout.to(tl.float32)
    delta = tl.sum(dout32 * (out.to(tl.float32) - bias[None, :]), 1) - d_linear_dot_out

    # Pass 1: softmax statistics over the critical blocks (log2 domain).
    qk_scale = sm_scale * 1.4426950408889634
    row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    lut = LUT + state * num_critical
    for t in range(0, num_critical, STEP_BLOCKS):
        keys, key_ok = _gather_blocks(lut, t, num_critical, seq_len, BLOCK_K, STEP_BLOCKS)
        k = tl.load(k_base + keys[:, None] * stride_kl + dims[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.where(key_ok[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, 1))
        row_sum = row_sum * tl.exp2(row_max - new_max) + tl.sum(tl.exp2(s - new_max[:, None]), 1)
        row_max = new_max
    lse = row_max + tl.log2(row_sum)

    # Pass 2: dQ of the sparse branch.
    dq_sparse = tl.zeros([BLOCK_Q, HEAD_DIM], tl.float32)
    for t in range(0, num_critical, STEP_BLOCKS):
        keys, key_ok = _gather_blocks(lut, t, num_critical, seq_len, BLOCK_K, STEP_BLOCKS)
        k = tl.load(k_base + keys[:, None] * stride_kl + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vl + dims[None, :], mask=key_ok[:, None], other=0.0)
        p = tl.where(key_ok[None, :], tl.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]), 0.0)
        dp = tl.dot(dout, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq_sparse += tl.dot(ds.to(k.dtype), k)
    dq += dq_sparse * sm_scale

    tl.store(DQ + dense_rows[:, None] * HEAD_DIM + dims[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + dense_rows, lse, mask=row_ok)
    tl.store(DELTA + dense_rows, delta, mask=row_ok)


@triton.jit
def backward_key_kernel(
    Q, K, V, DOUT, LSE, DELTA, CSR_OFFSETS, CSR_QBLOCKS, DKV_STATE, DK_STATE,
    DK, DV,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_db, stride_dh, stride_dl,
    num_heads, seq_len, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, FEATURE_MAP: tl.constexpr,
    STEP_BLOCKS: tl.constexpr,
):
    """One key block: dK, dV from the query blocks that hold it critical (CSR lists, STEP_BLOCKS per step) plus
    the linear branch through ``dS_j`` (DKV_STATE ``[BH, nk, D*D]``) and ``dz_j`` (DK_STATE ``[BH, nk, D]``).

    DK, DV are contiguous ``[B, H, L, D]``.
    """
    sm_scale = tl.cast(sm_scale, tl.float32)  # Inductor passes Python floats as fp64
    kblock = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    state = bh.to(tl.int64) * tl.cdiv(seq_len, BLOCK_K) + kblock
    keys = kblock * BLOCK_K + tl.arange(0, BLOCK_K)
    key_ok = keys < seq_len
    dims = tl.arange(0, HEAD_DIM)
    k = tl.load(K + b.to(tl.int64) * stride_kb + h * stride_kh + keys[:, None] * stride_kl + dims[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + h * stride_vh + keys[:, None] * stride_vl + dims[None, :],
                mask=key_ok[:, None], other=0.0)
    q_base = Q + b.to(tl.int64) * stride_qb + h * stride_qh
    dout_base = DOUT + b.to(tl.int64) * stride_db + h * stride_dh
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_K, HEAD_DIM], tl.float32)
    start = tl.load(CSR_OFFSETS + state)
    end = tl.load(CSR_OFFSETS + state + 1)
    for t in range(start, end, STEP_BLOCKS):
        rows, row_ok = _gather_blocks(CSR_QBLOCKS, t, end, seq_len, BLOCK_Q, STEP_BLOCKS)
        q = tl.load(q_base + rows[:, None] * stride_ql + dims[None, :], mask=row_ok[:, None], other=0.0)
        dout = tl.load(dout_base + rows[:, None] * stride_dl + dims[None, :], mask=row_ok[:, None], other=0.0)
        # lse = +inf on padding rows makes their probabilities exactly zero.
        lse = tl.load(LSE + bh.to(tl.int64) * seq_len + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * seq_len + rows, mask=row_ok, other=0.0)
        p_t = tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
        dv += tl.dot(p_t.to(dout.dtype), dout)
        ds_t = p_t * (tl.dot(v, tl.trans(dout)) - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    dk *= sm_scale

    # Linear branch: S_j = phi(K_j)^T V_j, z_j = sum phi(K_j).
    phi = _feature_map(k.to(tl.float32), FEATURE_MAP)
    d_kv = tl.load(DKV_STATE + state * HEAD_DIM * HEAD_DIM + dims[:, None] * HEAD_DIM + dims[None, :])
    d_z = tl.load(DK_STATE + state * HEAD_DIM + dims)
    d_phi = tl.dot(v.to(d_kv.dtype), tl.trans(d_kv)) + d_z[None, :]
    dv += tl.dot(phi.to(d_kv.dtype), d_kv)
    dk += _feature_map_grad(k.to(tl.float32), phi, d_phi, FEATURE_MAP)

    dense_rows = bh.to(tl.int64) * seq_len + keys
    tl.store(DK + dense_rows[:, None] * HEAD_DIM + dims[None, :], dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + dense_rows[:, None] * HEAD_DIM + dims[None, :], dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


# ----------------------------------------------------------------------------------------------- host side


def _launch_options(head_dim: int, block_q: int) -> dict[str, int]:
    """Launch configuration of the attention kernels (measured on H100: docs/sla.md)."""
    return {"num_warps": 4 if head_dim * block_q <= 64 * 64 else 8, "num_stages": 3}


def _step_blocks(head_dim: int, block_q: int, block_k: int) -> int:
    """Blocks per inner-loop step of the backward kernels: two 64-blocks (a 128-wide product) were faster on
    H100 for D = 64 with 64x64 blocks; with a 128-block or D = 128 that overflows shared memory (seen: 240 KB
    for fp16, BQ = 128)."""
    return 2 if head_dim == block_q == block_k == 64 else 1


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _with_unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _feature_code(feature_map: str) -> int:
    return FEATURE_MAPS.index(feature_map)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the linear-branch states S_j, M_i and dM_i: bf16 for bf16 inputs (tensor-core GEMMs, half the
    bytes); fp16 could overflow on these sums at long L, so fp16 inputs get fp32 (tf32 GEMMs). z_i and dS_j
    (a gradient summed over many query blocks) are always fp32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B*H*L, D]`` in memory order (a view for any dense layout), for reductions."""
    order = sorted(range(3), key=lambda i: -x.stride(i))
    return x.permute(*order, 3).reshape(-1, x.shape[-1])


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of half-precision matrices with a float32 result (tensor cores on CUDA; upcast elsewhere)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """``reference.pool_blocks`` in one pass: fp32 ``[B, H, n_blocks, D]``."""
    batch, heads, length, dim = x.shape
    pooled = torch.empty(batch, heads, num_blocks(length, block), dim, device=x.device, dtype=torch.float32)
    wrap_triton(pool_kernel)[(pooled.shape[2], batch * heads)](
        x, pooled, *_strides(x), heads, length, HEAD_DIM=dim, BLOCK=block, num_warps=4
    )
    return pooled


def key_states(k: torch.Tensor, v: torch.Tensor, block_k: int, feature_map: str) -> tuple[torch.Tensor, ...]:
    """Per key block ``S_j`` ``[BH, nk, D*D]`` (``_state_dtype``), ``z_j`` fp32 ``[BH, nk, D]`` and the pooled
    keys fp32 ``[B, H, nk, D]``."""
    batch, heads, length, dim = k.shape
    num_kblocks = num_blocks(length, block_k)
    device = k.device
    kv_block = torch.empty(batch * heads, num_kblocks, dim * dim, device=device, dtype=_state_dtype(k.dtype))
    k_block = torch.empty(batch * heads, num_kblocks, dim, device=device, dtype=torch.float32)
    pooled_k = torch.empty(batch, heads, num_kblocks, dim, device=device, dtype=torch.float32)
    wrap_triton(key_state_kernel)[(num_kblocks, batch * heads)](
        k, v, kv_block, k_block, pooled_k, *_strides(k), *_strides(v), heads, length,
        HEAD_DIM=dim, BLOCK_K=block_k, FEATURE_MAP=_feature_code(feature_map), num_warps=4,
    )
    return kv_block, k_block, pooled_k


def _tile(size: int | torch.SymInt, smallest: int, largest: int) -> int:
    """A power-of-two tile for ``size`` elements in ``[smallest, largest]``; ``largest`` for a symbolic size (the
    kernels mask their tiles, so one compiled kernel of an exported graph serves every size)."""
    if isinstance(size, torch.SymInt):
        return largest
    return min(largest, max(smallest, triton.next_power_of_2(size)))


# Key blocks per chunk and warps of the classification kernel, for a known and a symbolic nk alike (torch.export
# with a dynamic frame count). Measured per call on the H200 at VGGT-1B's global attention (benchmarks/
# bench_classify.py, 2026-12-01, eleventh session): chunks of 256 with 4 warps take 0.10 / 0.31 / 1.80 ms at 8 / 32 /
# 100 frames (nk 172 / 687 / 2,147); 1 warp 0.11 / 0.38 / 3.13, chunks of 512 or 1,024 slower at 100 frames.
_CLASSIFY_CHUNK, _CLASSIFY_WARPS = 256, 4


def classify(
    scores: torch.Tensor, kh: float, kl: float, mask_dtype: torch.dtype, chunk: int | None = None,
    warps: int | None = None,
) -> tuple[BlockMap, torch.Tensor]:
    """``reference.classify_blocks`` in one kernel, plus the 0/1 marginal matrix ``[BH, nq, nk_padded]`` (rows
    padded to a multiple of 64 so that the GEMMs load aligned tiles; columns past nk are never read).

    ``chunk`` (a power of two >= 32 * warps) and ``warps`` override how many key blocks the kernel reads at once
    and with how many warps (tests, ``benchmarks/bench_classify.py``)."""
    batch, heads, num_qblocks, num_kblocks = scores.shape
    n_critical, n_negligible = block_counts(num_kblocks, kh, kl)
    chunk = chunk or _tile(num_kblocks, 32, _CLASSIFY_CHUNK)
    warps = warps or min(_CLASSIFY_WARPS, chunk // 32)
    if chunk < 32 * warps or chunk & (chunk - 1):
        raise ValueError(f"classify: chunk must be a power of two >= 32 * warps; got chunk={chunk}, warps={warps}")
    device = scores.device
    classes = torch.empty(scores.shape, device=device, dtype=torch.int8)
    critical = torch.empty(batch, heads, num_qblocks, n_critical, device=device, dtype=torch.int32)
    padded_cols = num_blocks(num_kblocks, 64) * 64
    marginal = torch.empty(batch * heads, num_qblocks, padded_cols, device=device, dtype=mask_dtype)
    wrap_triton(classify_kernel)[(batch * heads * num_qblocks,)](
        scores.contiguous(), classes, critical, marginal, num_kblocks, padded_cols, n_critical, n_negligible,
        CHUNK=chunk, num_warps=warps,
    )
    return BlockMap(classes, critical), marginal


def marginal_sum(mask: torch.Tensor, state: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``mask @ state`` per batch*head: ``mask`` ``[BH, rows, >= depth]`` (any strides; columns past ``depth`` are
    ignored), ``state`` contiguous ``[BH, depth, cols]``; the result ``[BH, rows, cols]`` in ``out_dtype``."""
    batch, rows, _ = mask.shape
    depth, cols = state.shape[1:]
    out = torch.empty(batch, rows, cols, device=state.device, dtype=out_dtype)
    widest_n = 256 if state.is_cuda else 1024  # the CPU interpreter pays per program, not per element
    block_m, block_n, block_k = _tile(rows, 16, 64), _tile(cols, 16, widest_n), _tile(depth, 16, 64)
    grid = (num_blocks(rows, block_m), num_blocks(cols, block_n), batch)
    wrap_triton(marginal_sum_kernel)[grid](
        mask, state, out, *mask.stride(), rows, cols, depth,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
        # float32 states (fp16 inputs) with 64x256 tiles need 240 KB for 3 stages, over Hopper's 227 KB (seen
        # on H200 at L = 4127); 2 stages fit
        num_stages=3 if state.element_size() <= 2 else 2,
    )
    return out


class Precomputed(NamedTuple):
    """What both passes derive from q, k, v before their main kernels."""

    blocks: BlockMap
    marginal: torch.Tensor  # 0/1 [BH, nq, nk padded to 64], the states' dtype
    kv_state: torch.Tensor  # M_i [BH, nq, D*D], the states' dtype
    k_state: torch.Tensor  # z_i, fp32 [BH, nq, D]


def precompute(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kh: float, kl: float, block_q: int, block_k: int,
    feature_map: str,
) -> Precomputed:
    """Block map (Triton pooling and classification, same rule as the reference) and marginal states."""
    kv_block, k_block, pooled_k = key_states(k, v, block_k, feature_map)
    blocks, marginal = classify(block_scores(pool(q, block_q), pooled_k), kh, kl, kv_block.dtype)
    kv_state = marginal_sum(marginal, kv_block, kv_block.dtype)
    k_state = marginal_sum(marginal, k_block, torch.float32)
    return Precomputed(blocks, marginal, kv_state, k_state)


def launch_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    pre: Precomputed, block_q: int, block_k: int, feature_map: str, qk_codes: str | None = None,
) -> torch.Tensor:
    """The fused forward kernel alone (with ``qk_codes``: after quantizing q and k, QUANTIZED_QK)."""
    batch, heads, length, dim = q.shape
    critical = pre.blocks.critical
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    codes = (q, q, k, k)  # not read without QUANTIZED_QK
    if qk_codes:
        codes = (*quantize_blocks(q, block_q, qk_codes), *quantize_blocks(smooth_keys(k), block_k, qk_codes))
    wrap_triton(forward_kernel)[(num_blocks(length, block_q), batch * heads)](
        q, k, v, out, critical, pre.kv_state, pre.k_state, weight.contiguous(), bias.contiguous(), *codes,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        heads, length, critical.shape[-1], dim**-0.5, LINEAR_EPS,
        HEAD_DIM=dim, BLOCK_Q=block_q, BLOCK_K=block_k, FEATURE_MAP=_feature_code(feature_map),
        QUANTIZED_QK=qk_codes is not None, **_launch_options(dim, block_q),
    )
    return out


def sla_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    kh: float, kl: float, block_q: int, block_k: int, feature_map: str, qk_codes: str | None = None,
) -> torch.Tensor:
    """SLA forward; ``q, k, v`` fp16/bf16 ``[B, H, L, D]`` (any strides), D in (64, 128); ``qk_codes``: the
    quantized Q K^T variant (``reference.sparse_linear_attention_reference``)."""
    q, k, v = (_with_unit_last_stride(x) for x in (q, k, v))
    pre = precompute(q, k, v, kh, kl, block_q, block_k, feature_map)
    return launch_forward(q, k, v, weight, bias, pre, block_q, block_k, feature_map, qk_codes)


def launch_backward_query(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor, out: torch.Tensor, pre: Precomputed, block_q: int, block_k: int, feature_map: str,
) -> tuple[torch.Tensor, ...]:
    """``backward_query_kernel``: returns ``(dq, lse, delta, dM [BH, nq, D*D], dz [BH, nq, D], O_l)``."""
    batch, heads, length, dim = q.shape
    num_qblocks = num_blocks(length, block_q)
    critical = pre.blocks.critical
    device = q.device
    dq = torch.empty(q.shape, device=device, dtype=q.dtype)
    linear_out = torch.empty_like(dout)
    lse = torch.empty(batch * heads, length, device=device, dtype=torch.float32)
    delta = torch.empty(batch * heads, length, device=device, dtype=torch.float32)
    d_kv = torch.empty(batch * heads, num_qblocks, dim * dim, device=device, dtype=_state_dtype(q.dtype))
    d_k = torch.empty(batch * heads, num_qblocks, dim, device=device, dtype=torch.float32)
    wrap_triton(backward_query_kernel)[(num_qblocks, batch * heads)](
        q, k, v, out, dout, critical, pre.kv_state, pre.k_state, weight.contiguous(), bias.contiguous(),
        dq, lse, delta, d_kv, d_k, linear_out,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(dout), *_strides(linear_out),
        heads, length, critical.shape[-1], dim**-0.5, LINEAR_EPS,
        HEAD_DIM=dim, BLOCK_Q=block_q, BLOCK_K=block_k, FEATURE_MAP=_feature_code(feature_map),
        STEP_BLOCKS=_step_blocks(dim, block_q, block_k), **_launch_options(dim, block_q),
    )
    return dq, lse, delta, d_kv, d_k, linear_out


def critical_csr(critical: torch.Tensor, num_kblocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Transpose the LUT: for every (batch*head, key block), the query blocks that hold it critical.

    Returns ``offsets`` int32 ``[BH * nk + 1]`` and ``qblocks`` int32, row ``r`` being
    ``qblocks[offsets[r]:offsets[r + 1]]`` in ascending order.
    """
    batch, heads, num_qblocks, n_critical = critical.shape
    device = critical.device
    head = torch.arange(batch * heads, device=device, dtype=torch.int32).view(-1, 1, 1)
    rows = (head * num_kblocks + critical.flatten(0, 1)).flatten()
    sorted_rows, order = torch.sort(rows, stable=True)
    all_rows = torch.arange(batch * heads * num_kblocks + 1, device=device, dtype=torch.int32)
    offsets = torch.searchsorted(sorted_rows, all_rows, out_int32=True)
    return offsets, (order // n_critical % num_qblocks).to(torch.int32)


def launch_backward_key(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: torch.Tensor,
    delta: torch.Tensor, csr: tuple[torch.Tensor, torch.Tensor], d_kv: torch.Tensor, d_k: torch.Tensor,
    block_q: int, block_k: int, feature_map: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``backward_key_kernel``: ``(dk, dv)`` from the CSR-transposed LUT and the key blocks' ``dS_j, dz_j``."""
    batch, heads, length, dim = q.shape
    dk = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dv = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    wrap_triton(backward_key_kernel)[(num_blocks(length, block_k), batch * heads)](
        q, k, v, dout, lse, delta, *csr, d_kv, d_k,
        dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
        heads, length, dim**-0.5,
        HEAD_DIM=dim, BLOCK_Q=block_q, BLOCK_K=block_k, FEATURE_MAP=_feature_code(feature_map),
        STEP_BLOCKS=_step_blocks(dim, block_q, block_k), **_launch_options(dim, block_k),
    )
    return dk, dv


def sla_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor, out: torch.Tensor, kh: float, kl: float, block_q: int, block_k: int, feature_map: str,
) -> tuple[torch.Tensor, ...]:
    """Gradients ``(dq, dk, dv, dweight, dbias)`` of ``sla_forward``; ``out`` is its saved output."""
    q, k, v, out, dout = (_with_unit_last_stride(x) for x in (q, k, v, out, dout))
    pre = precompute(q, k, v, kh, kl, block_q, block_k, feature_map)
    options = (block_q, block_k, feature_map)
    dq, lse, delta, d_kv_query, d_k_query, linear_out = launch_backward_query(
        dout, q, k, v, weight, bias, out, pre, *options
    )
    marginal_t = pre.marginal[..., : pre.blocks.classes.shape[-1]].transpose(1, 2)
    d_kv_key = marginal_sum(marginal_t, d_kv_query, torch.float32)
    d_k_key = marginal_sum(marginal_t, d_k_query, torch.float32)
    csr = critical_csr(pre.blocks.critical, pre.blocks.classes.shape[-1])
    dk, dv = launch_backward_key(dout, q, k, v, lse, delta, csr, d_kv_key, d_k_key, *options)
    dweight = _matmul_fp32(_rows(dout).t(), _rows(linear_out)).to(weight.dtype)
    dbias = dout.sum(dim=(0, 1, 2), dtype=torch.float32).to(bias.dtype)
    return dq, dk, dv, dweight, dbias
