"""Experiment: the SLA block classification by radix select, measured against ``kernels.classify_kernel``.

``classify_kernel`` finds its two thresholds by 32-step binary searches, each step a compare-and-count pass
over the row (3.13 ms per call on the H200 at nk = 2,147, bound by those passes). Here both thresholds come
from 8 passes of 4-bit digits over the scores' order-preserving keys: each pass builds one 32-bin
``tl.histogram`` (16 bins for the keys under the top threshold's prefix, 16 for those under the bottom one's)
and picks each threshold's next digit from a cumulative sum. The last pass also gives the counts that the
existing kernel's second pass computes, so a row is read 9 times instead of 34. Classes, LUT and marginal are
then written as ``classify_kernel`` writes them; the outputs must equal ``reference.classify_blocks``.

    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/classify_radix.py   # CPU: outputs, then sm_90 AOT
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
import triton.language as tl

from lite3r.sla import kernels
from lite3r.sla.kernels import _CLASSIFY_CHUNK, _ordered_chunk, _tile
from lite3r.sla.reference import BlockMap, block_counts, classify_blocks, num_blocks

# Bits per radix digit, a divisor of 32. SASS instructions per 256-key chunk of a row (sm_90, one warp, chunk
# loops only; ``classify_kernel``: 6,238 with Triton 3.6, 6,291 with 3.9), digits of 2 / 4 / 8 bits: 5,964 / 4,173
# / 4,772 with 3.6, which builds histograms from warp ballots (2 x 16 bins fill the 32 it pads to, one per lane),
# and 3,698 / 2,318 / 1,834 with 3.9, which uses shared-memory atomics. The H200 runs 3.6.
DIGIT_BITS = tl.constexpr(4)
RADIX = tl.constexpr(1 << DIGIT_BITS.value)


@triton.jit
def _radix_chunk(SCORES, row, start, num_kblocks, CHUNK: tl.constexpr):
    """Lanes ``start + [0, CHUNK)`` of one row as int32 keys whose *unsigned* order is the float order (the
    ``_ordered_chunk`` key with its sign bit flipped), and which lanes are real."""
    lanes = start + tl.arange(0, CHUNK)
    valid = lanes < num_kblocks
    bits = (tl.load(SCORES + row * num_kblocks + lanes, mask=valid, other=0.0) + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) | -2147483648), valid


@triton.jit
def classify_radix_kernel(
    SCORES, CLASSES, LUT, MARGINAL,
    num_kblocks, marginal_cols, n_critical, n_negligible,
    CHUNK: tl.constexpr,
):
    """``classify_kernel``'s contract (same arguments and outputs), with the thresholds found by radix select.

    Top: the n_critical-th largest key; bottom: the max(n_negligible, 1)-th smallest (unused when n_negligible
    is 0). Each pass narrows both to keys that share their prefix so far; once the prefixes differ no key
    matches both, so one histogram holds both (RADIX bins top, RADIX bottom; while equal, bottom reads top's).
    CHUNK >= 32 * num_warps, so that no key is held by two threads: Triton 3.6 and 3.9 lower tl.histogram
    differently, and neither is relied on to count a replicated key once.
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
        shift = 32 - DIGIT_BITS * (p + 1)  # constexpr: p is
        hist = tl.zeros([2 * RADIX], tl.int32)
        for start in range(0, num_kblocks, CHUNK):
            key, valid = _radix_chunk(SCORES, row, start, num_kblocks, CHUNK)
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

    # classify_kernel's threshold keys (signed int64), and what its tie-counting pass would give.
    top_lo = (top_prefix ^ -2147483648).to(tl.int64)
    bottom_hi = (bottom_prefix ^ -2147483648).to(tl.int64)
    top_ties_before = tl.zeros([], tl.int32)
    bottom_ties_before = tl.zeros([], tl.int32)
    critical_before = tl.zeros([], tl.int32)
    for start in range(0, num_kblocks, CHUNK):  # classify_kernel's write loop, verbatim
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


def classify_radix(
    scores: torch.Tensor, kh: float, kl: float, mask_dtype: torch.dtype, chunk: int | None = None, warps: int = 1
) -> tuple[BlockMap, torch.Tensor]:
    """``kernels.classify`` with ``classify_radix_kernel``: same outputs; ``chunk`` a power of two >= 32 * warps."""
    batch, heads, num_qblocks, num_kblocks = scores.shape
    n_critical, n_negligible = block_counts(num_kblocks, kh, kl)
    chunk = chunk or _tile(num_kblocks, 32 * warps, _CLASSIFY_CHUNK)
    if chunk < 32 * warps:
        raise ValueError(f"chunk {chunk} < 32 * warps ({warps}): threads would hold copies of the same keys")
    device = scores.device
    classes = torch.empty(scores.shape, device=device, dtype=torch.int8)
    critical = torch.empty(batch, heads, num_qblocks, n_critical, device=device, dtype=torch.int32)
    padded_cols = num_blocks(num_kblocks, 64) * 64
    marginal = torch.empty(batch * heads, num_qblocks, padded_cols, device=device, dtype=mask_dtype)
    classify_radix_kernel[(batch * heads * num_qblocks,)](
        scores.contiguous(), classes, critical, marginal, num_kblocks, padded_cols, n_critical, n_negligible,
        CHUNK=chunk, num_warps=warps,
    )
    return BlockMap(classes, critical), marginal


# ----------------------------------------------------------------------------------------- CPU self-check


def _cases():
    """(name, scores [1, 2, nq, nk], chunk): seeded random scores and heavily tied ones at several nk."""
    for seed, nk in enumerate((1, 2, 5, 17, 64, 100, 300)):
        generator = torch.Generator().manual_seed(seed)
        random = torch.randn(1, 2, 2, nk, generator=generator)
        tied = torch.randint(-2, 3, (1, 2, 2, nk), generator=generator).float() * 0.5
        tied[tied == 0] = -0.0
        tied[0, 0, 1] = tied[0, 0, 1].abs()  # +0.0 in place of -0.0
        tied[0, 1, 0] = 0.25  # all equal
        tied[0, 1, 1] = torch.where(torch.rand(nk, generator=generator) < 0.5, 0.0, -0.0)  # zeros of both signs
        softmax = (random * 4).softmax(-1)  # what the model feeds it: positive, small, close together
        yield f"random nk={nk}", random, None
        yield f"tied nk={nk}", tied, None
        yield f"softmax nk={nk}", softmax, None
        if nk > 32:
            yield f"random nk={nk} chunk=32", random, 32
            yield f"tied nk={nk} chunk=32", tied, 32


FRACTIONS = ((0.05, 0.10), (0.5, 0.3), (0.0, 0.0), (1.0, 0.0))  # (kh, kl): model, wide, fewest, all critical


def _check_outputs() -> int:
    """Cases whose classes, LUT or marginal differ from the reference or from ``kernels.classify``."""
    failures = 0
    for (name, scores, chunk), (kh, kl) in itertools.product(_cases(), FRACTIONS):
        nk = scores.shape[-1]
        want = classify_blocks(scores, kh, kl)
        got, marginal = classify_radix(scores, kh, kl, torch.float32, chunk=chunk)
        shipped, shipped_marginal = kernels.classify(scores, kh, kl, torch.float32, chunk=chunk)
        want_marginal = (want.classes == 0).float().flatten(0, 1)
        same = {
            "classes": torch.equal(got.classes, want.classes),
            "lut": torch.equal(got.critical, want.critical),
            "marginal": torch.equal(marginal[..., :nk], want_marginal),
            "= classify": torch.equal(got.classes, shipped.classes) and torch.equal(got.critical, shipped.critical)
            and torch.equal(marginal[..., :nk], shipped_marginal[..., :nk]),
        }
        ok = all(same.values())
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<24} kh={kh} kl={kl} counts={block_counts(nk, kh, kl)} "
              + " ".join(f"{k}={v}" for k, v in same.items()), flush=True)
    return failures


def _sass_loops(fn, chunk: int) -> tuple[int, list[int], int]:
    """``fn`` compiled for sm_90 with one warp (CHUNK=chunk): its SASS instruction count, the sizes of its
    innermost loops (the chunk loops), and their sum per chunk of a row, weighting a loop nested in another by
    32 (the only such nesting: ``classify_kernel``'s 32-step search around its counting loop)."""
    from triton.backends.compiler import GPUTarget

    signature = {"SCORES": "*fp32", "CLASSES": "*i8", "LUT": "*i32", "MARGINAL": "*bf16", "num_kblocks": "i32",
                 "marginal_cols": "i32", "n_critical": "i32", "n_negligible": "i32", "CHUNK": "constexpr"}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={"CHUNK": chunk})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    assert f".entry {fn.__name__}" in compiled.asm["ptx"]
    nvdisasm = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([nvdisasm, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
    labels, loops, count = {}, [], 0
    for line in sass.splitlines():
        if label := re.match(r"(\.L_x_\d+):", line):
            labels[label.group(1)] = count
        elif instruction := re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*);", line):
            target = re.search(r"BRA `\((\.L_x_\d+)\)", instruction.group(1))
            if target and labels.get(target.group(1), count) < count:  # a backward branch closes a loop
                loops.append((labels[target.group(1)], count))
            count += 1
    innermost = [(a, b) for a, b in loops if not any(a < c <= d < b for c, d in loops)]
    sizes = [b - a + 1 for a, b in innermost]
    nested = [any(c < a and b < d for c, d in loops) for a, b in innermost]
    return count, sizes, sum(size * (32 if inside else 1) for size, inside in zip(sizes, nested))


def main() -> int:
    """Under the interpreter: the outputs, then this script again without it (sm_90 compilation needs the JIT
    functions, which TRITON_INTERPRET replaces at decoration). Without it: the compilation only."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        failures = _check_outputs()
        print(f"outputs: {failures} mismatching case(s)", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return int(failures > 0) or subprocess.run([sys.executable, __file__], env=env).returncode
    for fn in (kernels.classify_kernel, classify_radix_kernel):
        total, sizes, per_chunk = _sass_loops(fn, _CLASSIFY_CHUNK)
        print(f"sm_90 (Triton {triton.__version__}) {fn.__name__}: {total} SASS instructions; chunk loops of "
              f"{sizes} instructions, {per_chunk} per chunk of {_CLASSIFY_CHUNK} keys per row (1 warp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
