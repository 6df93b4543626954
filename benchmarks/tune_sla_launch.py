"""Launch choices of the SLA forward kernel and the marginal-state GEMM at VGGT-1B's global-attention sizes
(16 heads x D 64, 1374 tokens per 518² frame, kh 5 %, kl 10 %, bf16), timed as launched alone (median of 20):

- ``forward_kernel``: 16-bit scores and 8-bit codes (``int8``, ``fp8``; codes prepared beforehand, so the
  quantization is not timed), warps x pipeline stages;
- ``marginal_sum_kernel`` (``M = marginal @ S``): tile sizes, warps, stages; ``torch.bmm`` on the same matrices.

Checks the defaults of ``lite3r.sla.kernels`` (``_launch_options``, ``marginal_sum``).

    PYTHONPATH=src python3 benchmarks/tune_sla_launch.py --frames 32 100         # CUDA
"""

from __future__ import annotations

import argparse
import json

import torch

from lite3r.bench.measure import time_call, write_results
from lite3r.sla import kernels
from lite3r.sla.reference import quantize_blocks, smooth_keys

HEADS, DIM, TOKENS_PER_FRAME = 16, 64, 37 * 37 + 5
FORWARD = [(codes, warps, stages) for codes in (None, "int8", "fp8")
           for warps, stages in ((4, 2), (4, 3), (4, 4), (4, 5), (8, 3), (8, 4))]  # fmt: skip
MARGINAL = [(64, 256, 64, 4, 3), (64, 256, 64, 4, 4), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4),
            (128, 128, 64, 4, 3), (128, 128, 64, 8, 4), (128, 256, 32, 8, 4), (128, 128, 128, 8, 3)]


def _ms(fn, device) -> float | str:
    try:
        return time_call(fn, 20, device, warmup=2).median_ms
    except Exception as e:  # noqa: BLE001 - a launch that does not fit (shared memory) is a result too
        return f"failed: {str(e).splitlines()[0][:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for frames in args.frames:
        length = frames * TOKENS_PER_FRAME
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, HEADS, length, DIM, device=device, dtype=torch.bfloat16) for _ in range(3))
        weight, bias = torch.zeros(DIM, DIM, device=device), torch.zeros(DIM, device=device)
        pre = kernels.precompute(q, k, v, 0.05, 0.10, 64, 64, "softmax")
        out = torch.empty_like(q)
        critical = pre.blocks.critical
        for codes, warps, stages in FORWARD:
            code_args = (q, q, k, k)
            if codes:
                code_args = (*quantize_blocks(q, 64, codes), *quantize_blocks(smooth_keys(k), 64, codes))

            def forward():
                kernels.forward_kernel[(kernels.num_blocks(length, 64), HEADS)](
                    q, k, v, out, critical, pre.kv_state, pre.k_state, weight, bias, *code_args,
                    *kernels._strides(q), *kernels._strides(k), *kernels._strides(v), *kernels._strides(out),
                    HEADS, length, critical.shape[-1], DIM**-0.5, kernels.LINEAR_EPS, HEAD_DIM=DIM, BLOCK_Q=64,
                    BLOCK_K=64, FEATURE_MAP=kernels._feature_code("softmax"), QUANTIZED_QK=codes is not None,
                    num_warps=warps, num_stages=stages,
                )

            rows.append({"frames": frames, "kernel": "forward", "codes": codes, "warps": warps,
                         "stages": stages, "ms": _ms(forward, device)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        kv_block, _, pooled_k = kernels.key_states(k, v, 64, "softmax")
        _, marginal = kernels.classify(kernels.block_scores(kernels.pool(q, 64), pooled_k), 0.05, 0.10, kv_block.dtype)
        num_rows, depth, cols = marginal.shape[1], kv_block.shape[1], kv_block.shape[2]
        state = torch.empty(HEADS, num_rows, cols, device=device, dtype=kv_block.dtype)
        for block_m, block_n, block_k, warps, stages in MARGINAL:
            def marginal_sum():
                grid = (kernels.num_blocks(num_rows, block_m), kernels.num_blocks(cols, block_n), HEADS)
                kernels.marginal_sum_kernel[grid](
                    marginal, kv_block, state, *marginal.stride(), num_rows, cols, depth,
                    BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
                )

            rows.append({"frames": frames, "kernel": "marginal_sum", "tiles": [block_m, block_n, block_k],
                         "warps": warps, "stages": stages, "ms": _ms(marginal_sum, device)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        unpadded = marginal[..., :depth]
        rows.append({"frames": frames, "kernel": "torch.bmm", "ms": _ms(lambda: torch.bmm(unpadded, kv_block), device)})
        print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, rows=rows)


if __name__ == "__main__":
    main()
