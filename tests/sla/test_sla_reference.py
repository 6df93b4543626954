"""The SLA reference against independent dense computations, and its block-map rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lite3r.sla.reference import (
    CRITICAL,
    MARGINAL,
    NEGLIGIBLE,
    BlockMap,
    block_counts,
    block_map,
    check_options,
    classify_blocks,
    critical_attention,
    feature_map_fn,
    linear_attention,
    pool_blocks,
    quantize_blocks,
    quantized_qk,
    smooth_keys,
    sparse_linear_attention_reference,
)


def _qkv(batch=2, heads=3, length=300, dim=32, dtype=torch.float32):
    return [torch.randn(batch, heads, length, dim, dtype=dtype) for _ in range(3)]


def _random_block_map(batch, heads, nq, nk, n_critical, n_negligible) -> BlockMap:
    """Random classes with exactly n_critical / n_negligible key blocks per query block."""
    order = torch.rand(batch, heads, nq, nk).argsort(-1)
    by_rank = torch.full((nk,), MARGINAL, dtype=torch.int8)
    by_rank[:n_critical] = CRITICAL
    by_rank[nk - n_negligible :] = NEGLIGIBLE
    classes = torch.empty_like(order, dtype=torch.int8).scatter_(-1, order, by_rank.expand_as(order))
    critical = order[..., :n_critical].sort(-1).values.to(torch.int32)
    return BlockMap(classes, critical)


def _token_mask(classes, wanted, block_q, block_k, length):
    """Block classes -> bool [B, H, L, L] mask of token pairs in ``wanted`` blocks."""
    mask = (classes == wanted).repeat_interleave(block_q, -2).repeat_interleave(block_k, -1)
    return mask[..., :length, :length]


@pytest.mark.parametrize("block_q, block_k", [(64, 64), (128, 64), (64, 128)])
def test_every_block_critical_is_dense_attention(block_q, block_k):
    q, k, v = _qkv()
    zero_w, zero_b = torch.zeros(32, 32), torch.zeros(32)
    out = sparse_linear_attention_reference(q, k, v, zero_w, zero_b, kh=1.0, kl=0.0, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feature_map", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("block_q, block_k, length", [(64, 64, 300), (128, 64, 257), (64, 128, 320)])
def test_matches_dense_masked_computation_on_a_random_block_map(feature_map, block_q, block_k, length):
    batch, heads, dim = 2, 2, 16
    q, k, v = _qkv(batch, heads, length, dim, torch.float64)
    weight, bias = torch.randn(dim, dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    nq, nk = math.ceil(length / block_q), math.ceil(length / block_k)
    blocks = _random_block_map(batch, heads, nq, nk, n_critical=2, n_negligible=1)

    scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim)
    critical = _token_mask(blocks.classes, CRITICAL, block_q, block_k, length)
    sparse = torch.softmax(scores.masked_fill(~critical, float("-inf")), -1) @ v
    marginal = _token_mask(blocks.classes, MARGINAL, block_q, block_k, length)
    kernel = (feature_map_fn(q, feature_map) @ feature_map_fn(k, feature_map).transpose(-1, -2)) * marginal
    linear = (kernel @ v) / (kernel.sum(-1, keepdim=True) + 1e-6)
    expected = sparse + linear @ weight.T + bias

    out = sparse_linear_attention_reference(
        q, k, v, weight, bias, block_q=block_q, block_k=block_k, feature_map=feature_map, blocks=blocks
    )
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_linear_branch_is_zero_for_a_query_block_without_marginal_blocks():
    q, k, v = _qkv(1, 1, 128, 16)
    no_marginal = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    out = linear_attention(q, k, v, no_marginal, 64, 64, "softmax")
    assert torch.equal(out, torch.zeros_like(out))


def test_untrained_proj_lin_leaves_block_sparse_attention():
    q, k, v = _qkv()
    blocks = block_map(q, k, 0.2, 0.2, 64, 64)
    out = sparse_linear_attention_reference(q, k, v, torch.zeros(32, 32), torch.zeros(32), kh=0.2, kl=0.2)
    torch.testing.assert_close(out, critical_attention(q, k, v, blocks.critical, 64, 64))


def test_batch_entries_are_independent():
    q, k, v = _qkv(batch=3)
    weight, bias = torch.randn(32, 32), torch.randn(32)
    whole = sparse_linear_attention_reference(q, k, v, weight, bias, kh=0.25, kl=0.25)
    alone = sparse_linear_attention_reference(q[1:2], k[1:2], v[1:2], weight, bias, kh=0.25, kl=0.25)
    torch.testing.assert_close(whole[1:2], alone)


@pytest.mark.parametrize("feature_map", ["softmax", "elu", "relu"])
def test_gradients_match_finite_differences(feature_map):
    """Through the registered op (reference backend), in float64: q, k, v and proj_lin's weight and bias."""
    from lite3r.sla import sparse_linear_attention

    q, k, v = (x.requires_grad_() for x in _qkv(2, 1, 70, 4, torch.float64))  # 2 blocks, the second short
    weight = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def sla(*inputs):
        return sparse_linear_attention(*inputs, kh=0.5, kl=0.0, feature_map=feature_map, backend="reference")

    assert torch.autograd.gradcheck(sla, (q, k, v, weight, bias), eps=1e-6, atol=1e-6, fast_mode=True)


def test_pooling_ignores_padding_of_the_last_block():
    x = torch.randn(1, 1, 70, 8)
    pooled = pool_blocks(x, 64)
    torch.testing.assert_close(pooled[0, 0, 0], x[0, 0, :64].mean(0))
    torch.testing.assert_close(pooled[0, 0, 1], x[0, 0, 64:].mean(0))


def test_block_map_ranks_pooled_scores():
    q, k, _ = _qkv(2, 2, 640, 16)
    blocks = block_map(q, k, 0.2, 0.3, 64, 64)
    scores = pool_blocks(q, 64) @ pool_blocks(k, 64).transpose(-1, -2)
    counts = [(blocks.classes == c).sum(-1) for c in (CRITICAL, MARGINAL, NEGLIGIBLE)]
    assert [c.unique().tolist() for c in counts] == [[2], [5], [3]]
    lowest_critical = scores.masked_fill(blocks.classes != CRITICAL, float("inf")).amin(-1)
    highest_other = scores.masked_fill(blocks.classes == CRITICAL, float("-inf")).amax(-1)
    assert (lowest_critical > highest_other).all()
    highest_negligible = scores.masked_fill(blocks.classes != NEGLIGIBLE, float("-inf")).amax(-1)
    lowest_marginal = scores.masked_fill(blocks.classes != MARGINAL, float("inf")).amin(-1)
    assert (highest_negligible < lowest_marginal).all()
    assert torch.equal(blocks.critical, (blocks.classes == CRITICAL).nonzero()[:, -1].view(2, 2, 10, 2).int())


@pytest.mark.parametrize(
    "num_key_blocks, kh, kl, expected",
    [
        (687, 0.05, 0.10, (35, 68)),  # 32 VGGT frames: ceil(34.35), floor(68.7)
        (20, 0.05, 0.10, (1, 2)),  # exact products stay exact
        (30, 0.10, 0.10, (3, 3)),  # 0.1 * 30 == 3.0000000000000004 in floats
        (5, 0.0, 0.0, (1, 0)),  # at least one critical block
        (3, 0.5, 0.5, (2, 1)),  # never overlapping
        (1, 0.05, 0.10, (1, 0)),
    ],
)
def test_block_counts_rounding(num_key_blocks, kh, kl, expected):
    assert block_counts(num_key_blocks, kh, kl) == expected


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kh=1.5), "kh and kl"),
        (dict(kl=-0.1), "kh and kl"),
        (dict(kh=0.6, kl=0.5), "kh \\+ kl"),
        (dict(block_q=32), "block_q and block_k"),
        (dict(feature_map="cosine"), "feature_map"),
    ],
)
def test_bad_options_raise_one_clear_error(options, message):
    full = dict(kh=0.05, kl=0.1, block_q=64, block_k=64, feature_map="softmax") | options
    with pytest.raises(ValueError, match=message):
        check_options(**full)


def test_ties_go_to_the_lower_key_block_index():
    scores = torch.tensor([[[[0.5, 1.0, 1.0, -0.0, 0.0, -2.0, -2.0, 1.0]]]])
    blocks = classify_blocks(scores, kh=0.25, kl=0.25)  # 2 critical, 2 negligible of 8
    assert blocks.critical.tolist() == [[[[1, 2]]]]
    assert blocks.classes.tolist() == [[[[0, 1, 1, 0, 0, -1, -1, 0]]]]
    ties = classify_blocks(torch.zeros(1, 1, 1, 8), kh=0.25, kl=0.25)
    assert ties.classes.tolist() == [[[[1, 1, 0, 0, 0, 0, -1, -1]]]]


@pytest.mark.parametrize("codes, largest, steps", [("int8", 127, 255), ("fp8", 448, 253)])
def test_quantize_blocks_scales_each_block_to_the_largest_code(codes, largest, steps):
    """One scale per block of tokens maps the block's largest |value| to the largest code; padding is zero."""
    x = torch.randn(1, 2, 150, 64) * torch.tensor([1.0, 100.0]).view(1, 2, 1, 1)
    x[0, 0, 70] *= 50  # an outlier token: only its own block's scale grows
    q, scales = quantize_blocks(x, 64, codes)
    assert q.shape == (1, 2, 192, 64) and scales.shape == (1, 2, 3)
    assert (q[:, :, 150:].float() == 0).all()
    blocks = F.pad(x, (0, 0, 0, 42)).unflatten(2, (3, 64))
    torch.testing.assert_close(scales, blocks.abs().amax(dim=(-2, -1)) / largest)
    assert (q.float().abs().amax(dim=-1).unflatten(2, (3, 64)).amax(-1) == largest).all()
    assert scales[0, 0, 1] > 20 * scales[0, 0, 0]
    assert len(q.float().unique()) <= steps


def test_key_smoothing_leaves_exact_attention_unchanged_and_helps_quantized_scores():
    """Subtracting the keys' mean moves every score of a query by the same amount; with a large shared key
    offset, the 8-bit scores are then far closer to the exact ones."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 64) for _ in range(3))
    k += 8 * torch.randn(64)
    blocks = block_map(q, k, 0.5, 0.0, 64, 64)
    zero = (torch.zeros(64, 64), torch.zeros(64))
    exact = sparse_linear_attention_reference(q, k, v, *zero, kh=0.5, kl=0.0, blocks=blocks)
    smoothed = sparse_linear_attention_reference(q, smooth_keys(k), v, *zero, kh=0.5, kl=0.0, blocks=blocks)
    torch.testing.assert_close(smoothed, exact, atol=1e-5, rtol=1e-5)

    def score_error(keys):
        codes, scales = quantize_blocks(keys, 64, "int8")
        dequantized = (codes.float().unflatten(2, (-1, 64)) * scales[..., None, None]).flatten(2, 3)
        return (q @ dequantized.mT - q @ keys.mT).abs().max()

    assert score_error(smooth_keys(k)) < score_error(k) / 4
    assert quantized_qk(q, k, 64, 64, "int8")[1].shape == k.shape
