"""Sparse-Linear Attention in plain PyTorch: the specification the Triton kernels are tested against.

Runs on any device and dtype and accumulates in float32 (float64 for float64 inputs), so it doubles as the
CPU implementation. Memory grows with ``L * kh * L`` (critical blocks are gathered per query block), not
``L * L``. Every rounding and edge-case rule lives here; docs/sla.md explains them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F

FEATURE_MAPS = ("softmax", "elu", "relu")
BLOCK_SIZES = (64, 128)
CRITICAL, MARGINAL, NEGLIGIBLE = 1, 0, -1
# Added to the linear branch's denominator: keeps a query block with no marginal key block finite (its
# numerator is then exactly zero, so its linear output is zero) and is negligible next to any real sum.
LINEAR_EPS = 1e-6
# 8-bit codes of the quantized Q K^T variant: dtype and the largest |code| a block's largest |value| maps to.
# int8 (SageAttention's choice for Q K^T) is 2.5-3x more accurate than e4m3 here (docs/sla.md); both run on Hopper's
# 8-bit tensor cores.
QK_CODES = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}
# Guards ceil/floor against float noise such as 0.1 * 30 == 3.0000000000000004.
_ROUNDING_SLACK = 1e-9
_MAX_DENOMINATOR = 1 << 20


class BlockMap(NamedTuple):
    """Which key blocks each query block attends to, shared by the reference and the kernels.

    ``classes``: int8 ``[B, H, nq, nk]``, ``CRITICAL`` (1), ``MARGINAL`` (0) or ``NEGLIGIBLE`` (-1).
    ``critical``: int32 ``[B, H, nq, n_critical]``, the critical key-block indices in ascending order.
    """

    classes: torch.Tensor
    critical: torch.Tensor


def check_options(kh: float, kl: float, block_q: int, block_k: int, feature_map: str) -> None:
    """Reject bad SLA options with one clear message before any tensor work starts."""
    if not 0.0 <= kh <= 1.0 or not 0.0 <= kl <= 1.0:
        raise ValueError(f"kh and kl are fractions of key blocks in [0, 1]; got kh={kh}, kl={kl}")
    if kh + kl > 1.0:
        raise ValueError(f"kh + kl must not exceed 1 (critical and negligible blocks never overlap); got {kh + kl}")
    if block_q not in BLOCK_SIZES or block_k not in BLOCK_SIZES:
        raise ValueError(f"block_q and block_k must be one of {BLOCK_SIZES}; got {block_q}, {block_k}")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}; got {feature_map!r}")


def block_counts(num_key_blocks: int | torch.SymInt, kh: float, kl: float) -> tuple[int, int]:
    """Number of critical and negligible key blocks per query block.

    ``n_critical = clamp(ceil(kh * nk), 1, nk)``: at least one block, so softmax attention is always defined.
    ``n_negligible = min(floor(kl * nk), nk - n_critical)``: rounding down keeps more marginal blocks.
    A symbolic ``nk`` (torch.export with a dynamic frame axis) gets the same counts from integer arithmetic
    (``count_fraction``), so that the exported graph holds one formula for every frame count.
    """
    if isinstance(num_key_blocks, torch.SymInt):
        kh_frac, kl_frac = count_fraction(kh), count_fraction(kl)
        ceil_kh = (num_key_blocks * kh_frac.numerator + kh_frac.denominator - 1) // kh_frac.denominator
        n_critical = torch.sym_min(num_key_blocks, torch.sym_max(1, ceil_kh))
        floor_kl = num_key_blocks * kl_frac.numerator // kl_frac.denominator
        return n_critical, torch.sym_min(num_key_blocks - n_critical, floor_kl)
    n_critical = min(num_key_blocks, max(1, math.ceil(kh * num_key_blocks - _ROUNDING_SLACK)))
    n_negligible = min(num_key_blocks - n_critical, math.floor(kl * num_key_blocks + _ROUNDING_SLACK))
    return n_critical, n_negligible


def count_fraction(fraction: float) -> Fraction:
    """``kh`` or ``kl`` as ``p/q`` with ``q <= 2**20`` and ``float(p/q) == fraction``.

    Then ``ceil(p*nk/q)`` and ``floor(p*nk/q)`` equal the float rule of ``block_counts`` for every
    ``nk <= 2**20``: the float product is within ``nk * 2**-52 < 1e-9`` of the exact ``p*nk/q``, which is an
    integer or at least ``1/q >= 2**-20`` away from one, so the 1e-9 slack never changes the rounding.
    """
    exact = Fraction(fraction).limit_denominator(_MAX_DENOMINATOR)
    if float(exact) != fraction:
        raise ValueError(
            f"SLA fraction {fraction!r} is no p/q with q <= {_MAX_DENOMINATOR}; use values such as 0.05 or 0.125 "
            "for a model exported with a dynamic frame count"
        )
    return exact


def num_blocks(length: int | torch.SymInt, block: int) -> int | torch.SymInt:
    """``ceil(length / block)``, written as ``triton.cdiv`` writes it (one symbolic expression everywhere)."""
    return (length + block - 1) // block


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of ``x [B, H, L, D]`` over each block of ``block`` tokens; a short last block averages its real
    tokens only. Returns ``[B, H, ceil(L / block), D]`` in float32 (float64 for float64 inputs)."""
    dtype = _accumulation_dtype(x.dtype)
    length = x.shape[-2]
    sums = _pad_to_blocks(x, block).sum(-2, dtype=dtype)  # padding is zero
    starts = torch.arange(sums.shape[-2], device=x.device) * block
    return sums / (length - starts).clamp(max=block).to(dtype)[:, None]


def block_scores(pooled_q: torch.Tensor, pooled_k: torch.Tensor) -> torch.Tensor:
    """``pool(q) pool(k)^T / sqrt(D)``: the logits of P, ``[B, H, nq, nk]``."""
    return pooled_q @ pooled_k.transpose(-1, -2) / math.sqrt(pooled_q.shape[-1])


def _rank_keys(scores: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys that order each row by float32 score, ties going to the lower key-block index (ONNX
    TopK's rule): the float's bits made order-preserving as an int32, above the reversed index."""
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    reversed_index = torch.arange(scores.shape[-1] - 1, -1, -1, device=scores.device)
    return (ordered.to(torch.int64) << 32) | reversed_index


@torch.no_grad()
def classify_blocks(scores: torch.Tensor, kh: float, kl: float) -> BlockMap:
    """Per query block, the ``n_critical`` highest-scoring key blocks are critical and the ``n_negligible``
    lowest negligible (``block_counts``), ranking in float32 with ties to the lower key-block index.

    Softmax is monotone, so ranking the logits ranks P without the ties that float underflow of P would create.
    Classes come from each block's rank rather than from ``topk(n_critical)``, whose shape check would pin a
    symbolic count (torch.export) to one value.
    """
    num_key_blocks = scores.shape[-1]
    n_critical, n_negligible = block_counts(num_key_blocks, kh, kl)
    order = _rank_keys(scores).argsort(dim=-1, descending=True)  # rank -> key block
    positions = torch.arange(num_key_blocks, device=scores.device)
    rank = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))  # key block -> rank
    classes = torch.where(rank < n_critical, CRITICAL, MARGINAL)
    classes = torch.where(rank >= num_key_blocks - n_negligible, NEGLIGIBLE, classes).to(torch.int8)
    first = torch.arange(n_critical, device=scores.device).expand(*order.shape[:-1], n_critical)
    critical = order.gather(-1, first)
    return BlockMap(classes, critical.sort(dim=-1).values.to(torch.int32))


def block_map(q: torch.Tensor, k: torch.Tensor, kh: float, kl: float, block_q: int, block_k: int) -> BlockMap:
    """Classify key blocks per query block by ``softmax(pool(q) pool(k)^T / sqrt(D))`` (``classify_blocks``)."""
    return classify_blocks(block_scores(pool_blocks(q, block_q), pool_blocks(k, block_k)), kh, kl)


def _pad_to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B, H, n_blocks, block, D]``, zero-padded at the end."""
    n_blocks = num_blocks(x.shape[-2], block)
    return F.pad(x, (0, 0, 0, n_blocks * block - x.shape[-2])).unflatten(-2, (n_blocks, block))


def _unpad(x: torch.Tensor, length: int | torch.SymInt) -> torch.Tensor:
    """``[B, H, n_blocks, block, D]`` -> the first ``length`` tokens ``[B, H, L, D]``, as a new tensor: a sliced
    view would make later ops ask whether ``L == n_blocks * block`` (its contiguity), which a graph exported
    with a dynamic frame count cannot answer once for all counts."""
    return x.flatten(2, 3).index_select(2, torch.arange(length, device=x.device))


def feature_map_fn(x: torch.Tensor, name: str) -> torch.Tensor:
    """phi of the linear branch, applied per token over the head dimension."""
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return F.elu(x) + 1
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}; got {name!r}")


def _critical_keys(critical: torch.Tensor, block_k: int) -> torch.Tensor:
    """Token positions of the critical key blocks: ``[B, H, nq, n_critical]`` -> ``[B, H, nq, n_critical * block_k]``.

    Built with a ``gather`` over token slots rather than by splitting a ``[..., n_critical, block_k]`` view: a
    graph exported with a dynamic frame count may have ``n_critical == 1`` at the traced size, and reshapes or
    broadcasts over such a dimension would pin it to 1 for every count."""
    slots = torch.arange(critical.shape[-1] * block_k, device=critical.device)
    block_of_slot = (slots // block_k).expand(*critical.shape[:-1], slots.shape[0])
    return critical.long().gather(-1, block_of_slot) * block_k + slots % block_k


def _gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x [B, H, L, D]`` at ``positions [B, H, nq, T]`` (positions past L read zeros) -> ``[B, H, nq, T, D]``,
    with one flat ``index_select`` (a fresh contiguous tensor: its view needs no shape reasoning)."""
    batch, heads, length, dim = x.shape
    padded = F.pad(x, (0, 0, 0, 1))  # row L is the zero every out-of-range position reads
    head = torch.arange(batch * heads, device=x.device).view(batch, heads, 1, 1).expand_as(positions)
    rows = head * (length + 1) + positions.clamp(max=length)
    gathered = padded.flatten(0, 2).index_select(0, rows.flatten())
    return gathered.view(*positions.shape, dim)


def critical_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, critical: torch.Tensor, block_q: int, block_k: int
) -> torch.Tensor:
    """O_s: exact softmax attention (scale 1/sqrt(D)) of each query block over its critical key blocks.

    Computes in the dtype of ``q``; padding keys of a short last block are masked out.
    """
    length, dim = q.shape[-2:]
    key_pos = _critical_keys(critical, block_k)  # [B, H, nq, n_critical * block_k]: the keys each query block sees
    scores = _pad_to_blocks(q, block_q) @ _gather_tokens(k, key_pos).transpose(-1, -2) / math.sqrt(dim)
    scores = scores.masked_fill((key_pos >= length)[..., None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ _gather_tokens(v, key_pos)
    return _unpad(out, length)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    marginal: torch.Tensor,
    block_q: int,
    block_k: int,
    feature_map: str,
) -> torch.Tensor:
    """O_l: ``phi(q) (sum phi(k)^T v) / (phi(q) . sum phi(k) + eps)``, sums over each query block's marginal
    key blocks (``marginal``: bool ``[B, H, nq, nk]``). Computes in the dtype of ``q``."""
    length = q.shape[-2]
    phi_k = _pad_to_blocks(feature_map_fn(k, feature_map), block_k)  # padding is added after phi: it is zero
    per_block_kv = phi_k.transpose(-1, -2) @ _pad_to_blocks(v, block_k)  # [B, H, nk, D, D]
    per_block_k = phi_k.sum(-2)  # [B, H, nk, D]
    weights = marginal.to(q.dtype)
    kv_state = torch.einsum("bhij,bhjde->bhide", weights, per_block_kv)
    k_state = weights @ per_block_k
    phi_q = _pad_to_blocks(feature_map_fn(q, feature_map), block_q)  # [B, H, nq, BQ, D]
    numerator = phi_q @ kv_state
    denominator = (phi_q * k_state[..., None, :]).sum(-1, keepdim=True) + LINEAR_EPS
    return _unpad(numerator / denominator, length)


def check_qk_codes(qk_codes: str | None) -> None:
    if qk_codes is not None and qk_codes not in QK_CODES:
        raise ValueError(f"qk_codes must be None or one of {tuple(QK_CODES)}; got {qk_codes!r}")


def quantize_blocks(x: torch.Tensor, block: int, qk_codes: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, H, L, D]`` as 8-bit codes ``[B, H, n_blocks * block, D]`` (zero-padded) and one float32 scale per
    block of ``block`` tokens ``[B, H, n_blocks]``, ``x ~ codes * scale``: per-block scales (as SageAttention's)
    confine an outlier token's cost to its own block, and match the kernel's tiles."""
    dtype, largest = QK_CODES[qk_codes]
    tiles = _pad_to_blocks(x.float(), block)
    scales = tiles.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(torch.float32).tiny) / largest
    scaled = tiles / scales[..., None, None]
    if not dtype.is_floating_point:
        scaled = scaled.round()
    return scaled.clamp(-largest, largest).to(dtype).flatten(2, 3), scales


def smooth_keys(k: torch.Tensor) -> torch.Tensor:
    """``k`` minus its mean over the sequence, float32. Softmax attention does not change (every score of a query
    moves by the same ``q . mean``) but the keys' shared per-channel offset, which would set each block's scale,
    is gone (SageAttention's smoothing)."""
    k32 = k.float()
    return k32 - k32.mean(dim=-2, keepdim=True)


def quantized_qk(
    q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, qk_codes: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The q and (smoothed) k that the quantized Q K^T variant multiplies, dequantized to float32 ``[B, H, L, D]``."""
    length = q.shape[-2]

    def dequantized(x: torch.Tensor, block: int) -> torch.Tensor:
        codes, scales = quantize_blocks(x, block, qk_codes)
        return (codes.float().unflatten(2, (-1, block)) * scales[..., None, None]).flatten(2, 3)[:, :, :length]

    return dequantized(q, block_q), dequantized(smooth_keys(k), block_k)


def sparse_linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    kh: float = 0.05,
    kl: float = 0.10,
    block_q: int = 64,
    block_k: int = 64,
    feature_map: str = "softmax",
    blocks: BlockMap | None = None,
    compute_dtype: torch.dtype | None = None,
    qk_codes: str | None = None,
) -> torch.Tensor:
    """``O = O_s + proj_lin(O_l)`` for ``q, k, v [B, H, L, D]``; ``weight [D, D]``, ``bias [D]`` is ``proj_lin``.

    ``blocks`` defaults to ``block_map(q, k, ...)``; pass one to compare implementations on the same map.
    ``compute_dtype`` defaults to float32 (float64 for float64 inputs); a low-precision value gives the
    baseline error of the tolerance rule in docs/sla.md. ``qk_codes`` (``"int8"`` or ``"fp8"``): the quantized
    Q K^T variant, whose critical attention scores 8-bit codes of q and smoothed k (``quantized_qk``); the block
    map, P V and the linear branch are unchanged.
    Returns the dtype of ``q``.
    """
    check_options(kh, kl, block_q, block_k, feature_map)
    check_qk_codes(qk_codes)
    if blocks is None:
        blocks = block_map(q, k, kh, kl, block_q, block_k)
    dtype = compute_dtype or _accumulation_dtype(q.dtype)
    q32, k32, v32 = (x.to(dtype) for x in (q, k, v))
    q_scored, k_scored = q32, k32
    if qk_codes:
        q_scored, k_scored = (x.to(dtype) for x in quantized_qk(q, k, block_q, block_k, qk_codes))
    sparse_out = critical_attention(q_scored, k_scored, v32, blocks.critical, block_q, block_k)
    linear_out = linear_attention(q32, k32, v32, blocks.classes == MARGINAL, block_q, block_k, feature_map)
    return (sparse_out + F.linear(linear_out, weight.to(dtype), bias.to(dtype))).to(q.dtype)
