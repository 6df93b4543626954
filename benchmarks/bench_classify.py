"""The SLA block classification kernel alone, at VGGT-1B's global-attention sizes (16 heads, 1374 tokens per
518² frame, 64-token blocks), launched with several chunk sizes and warp counts: in the H200 profiles of
2026-12-01 the binary-search kernel it replaced took 15.3 of 284.6 ms at 32 frames and 74.0 of 1155 ms at 100
(the radix-select kernel: 1.9x faster per call at 100 frames).

Every launch must write the classes and critical LUT of ``reference.classify_blocks`` and the marginal matrix
that follows from them; the table gives the median ms per call (CUDA events) and whether the outputs match.

    PYTHONPATH=src python3 benchmarks/bench_classify.py --frames 8 32 100 --out classify.json    # CUDA
"""

from __future__ import annotations

import argparse
import json

import torch

from lite3r.bench.measure import time_call, write_results
from lite3r.sla import kernels
from lite3r.sla.reference import classify_blocks, num_blocks

HEADS, TOKENS_PER_FRAME, BLOCK = 16, 37 * 37 + 5, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 100])
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for frames in args.frames:
        nk = num_blocks(frames * TOKENS_PER_FRAME, BLOCK)
        torch.manual_seed(frames)
        scores = torch.randn(1, HEADS, nk, nk, device=device).softmax(-1)

        def launch(**overrides):
            block_map, marginal = kernels.classify(scores, args.kh, args.kl, torch.bfloat16, **overrides)
            return block_map.classes, block_map.critical, marginal[..., :nk]

        want = classify_blocks(scores, args.kh, args.kl)
        expected = (want.classes, want.critical, (want.classes == 0).to(torch.bfloat16).flatten(0, 1))
        launches = {"default": {}}
        tile = kernels._tile(nk, 32, 8192)
        launches |= {f"chunk {c}, {w} warps": {"chunk": c, "warps": w}
                     for c in sorted({min(tile, c) for c in (256, 512, 1024, 2048, 4096, 8192)})
                     for w in (1, 2, 4, 8) if c >= 32 * w}  # fmt: skip
        for name, overrides in launches.items():
            got = launch(**overrides)
            same = all(torch.equal(a, b) for a, b in zip(expected, got))
            ms = time_call(lambda o=overrides: launch(**o), args.reps, device).median_ms
            rows.append({"frames": frames, "nk": nk, "launch": name, "ms": ms, "same": same})
            print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, rows=rows)
    print("\n| frames | nk | launch | ms | same outputs |")
    for r in rows:
        print(f"| {r['frames']} | {r['nk']} | {r['launch']} | {r['ms']:.3f} | {r['same']} |")


if __name__ == "__main__":
    main()
