"""Where the student's time goes in TorchRuntime: kernel time by category (GEMM, dense attention, SLA,
convolution, fused elementwise/norm, copies) from torch.profiler, per frame count and runtime setting.

A setting is ``bf16`` or ``fp8`` (FP8 GEMMs) with ``+`` flags: ``heads`` (compile the DPT heads' chunks),
``int8`` / ``fp8qk`` (``RuntimeOptions.qk_codes``), ``cudnn-bench`` (``torch.backends.cudnn.benchmark``: cuDNN
times its convolution algorithms per shape). Scales are synthetic (weights' absmax, input range 8) because
speed does not depend on their values.

    PYTHONPATH=src python3 benchmarks/profile_runtime.py --frames 2 32 --settings fp8+heads fp8+heads+int8
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import lite3r
from lite3r.bench.measure import time_call
from lite3r.deploy.torch import RuntimeOptions, TorchRuntime
from lite3r.quant import FP8Recipe

CATEGORIES = (  # first match wins
    ("sla", r"pool_kernel|key_state_kernel|classify_kernel|marginal_sum_kernel|forward_kernel"),
    ("attention", r"flash|fmha|cudnn_generated_fort_native_sdpa|attention|sdpa"),
    ("gemm-fp8", r"f8|fp8|e4m3"),
    ("gemm", r"gemm|sm90_xmma|cutlass|nvjet|cublas"),
    ("conv", r"conv|implicit|dgrad|wgrad|cudnn"),
    ("triton-fused", r"^triton_"),
    ("copy/cast", r"copy|Memcpy|Memset|cast|elementwise_kernel|vectorized"),
)


def synthetic_quant_state(model) -> dict:
    entries = []
    for name in FP8Recipe().linear_names(model):
        amax = {"input": 8.0, "weight": model.get_submodule(name).weight.abs().max().item()}
        entries += [{"module": name, "tensor": t, "format": "e4m3", "num_bits": [4, 3], "axis": None, "amax": a}
                    for t, a in amax.items()]  # fmt: skip
    return {"format": "lite3r.quant_state", "version": 1, "quantizers": entries}


def categorize(name: str) -> str:
    for category, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return category
    return "other"


def kernel_profile(runtime, images) -> dict:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runtime(images)
        torch.cuda.synchronize()
    by_category, by_kernel = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            ms = event.device_time_total / 1e3 / 3
            by_kernel[event.key] += ms
            by_category[categorize(event.key)] += ms
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:25]
    return {"categories": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "top_kernels": [(k[:90], round(v, 3)) for k, v in top]}  # fmt: skip


SETTING_FLAGS = ("heads", "int8", "fp8qk", "cudnn-bench")


def profile_setting(student, state, setting: str, frame_counts, device) -> list[dict]:
    base, *flags = setting.split("+")
    if base not in ("bf16", "fp8") or not set(flags) <= set(SETTING_FLAGS):
        raise ValueError(f"setting {setting!r}: bf16 or fp8, then +flags from {SETTING_FLAGS}")
    qk_codes = "int8" if "int8" in flags else "fp8" if "fp8qk" in flags else None
    torch.backends.cudnn.benchmark = "cudnn-bench" in flags
    graphed = TorchRuntime.build(copy.deepcopy(student), RuntimeOptions(compile_heads="heads" in flags,
                                 qk_codes=qk_codes), quant_state=state if base == "fp8" else None)  # fmt: skip
    rows = []
    for frames in frame_counts:
        images = torch.rand(1, frames, 3, 518, 518, device=device)
        ms = time_call(lambda: graphed(images), 10, device, warmup=2).median_ms
        eager_launch = TorchRuntime(graphed.model, RuntimeOptions(cuda_graphs=False), device)
        eager_ms = time_call(lambda: eager_launch(images), 5, device, warmup=2).median_ms
        row = {"setting": setting, "frames": frames, "graph_ms": ms, "no_graph_ms": eager_ms,
               **kernel_profile(eager_launch, images)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    graphed.release()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--settings", nargs="+", default=["bf16", "bf16+heads", "fp8", "fp8+heads"])
    parser.add_argument("--out", default="profile.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    student = lite3r.convert_to_sla(lite3r.load_model("vggt"), layers="global", kh=0.05, kl=0.10)
    state = synthetic_quant_state(student)
    results = []
    for setting in args.settings:
        try:
            results += profile_setting(student, state, setting, args.frames, device)
        except Exception as e:  # noqa: BLE001 - one broken setting must not lose the others' numbers
            print(f"{setting}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| setting | frames | graph ms | no-graph ms | " + " | ".join(c for c, _ in CATEGORIES) + " | other |")
    for r in results:
        cats = " | ".join(f"{r['categories'].get(c, 0):.1f}" for c, _ in (*CATEGORIES, ("other", "")))
        print(f"| {r['setting']} | {r['frames']} | {r['graph_ms']:.1f} | {r['no_graph_ms']:.1f} | {cats} |")


if __name__ == "__main__":
    main()
