"""Which dense-attention backend is fastest for VGGT's shapes (bf16, 16 heads x 64): frame attention (each
frame alone, 1374 tokens at 518x518), global attention (all frames together), and the SLA students' dense rows
(the first ``--dense-tokens`` queries of every frame over all keys: ``sla.module.dense_frame_rows``). Chooses the
runtime's default and the dense rows' backend.

    PYTHONPATH=src python3 benchmarks/bench_sdpa_backends.py --frames 2 8 32
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lite3r.bench.measure import time_call

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--tokens", type=int, default=1374)
    parser.add_argument("--dense-tokens", type=int, default=5, help="VGGT: camera + 4 register tokens per frame")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for frames in args.frames:
        length = frames * args.tokens
        shapes = {"frame": (frames, args.tokens, args.tokens), "global": (1, length, length),
                  "dense_rows": (1, frames * args.dense_tokens, length)}  # fmt: skip
        for kind, (batch, queries, keys) in shapes.items():
            q = torch.randn(batch, 16, queries, 64, device=device, dtype=torch.bfloat16)
            k, v = (torch.randn(batch, 16, keys, 64, device=device, dtype=torch.bfloat16) for _ in range(2))
            row = {"frames": frames, "attention": kind}
            for name, backend in BACKENDS.items():
                try:
                    with sdpa_kernel(backend):
                        row[name] = time_call(lambda: F.scaled_dot_product_attention(q, k, v), args.reps, device,
                                              warmup=3).median_ms  # fmt: skip
                except RuntimeError as e:
                    row[name] = f"unavailable: {str(e).splitlines()[0][:80]}"
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
