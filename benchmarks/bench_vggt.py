"""End-to-end VGGT-1B latency and peak memory on a GPU (random weights, official autocast inference).

Variants, timed in the same process on the same inputs:
  teacher        dense attention, aggregator keeps only the layers the heads read (lite3r default)
  teacher-all24  dense attention, aggregator keeps all 24 layer outputs (the official behaviour)
  student-kh{X}  SLA in the global-attention layers (convert_to_sla, kh = X, kl = 0.10)

    python benchmarks/bench_vggt.py --frames 2 8 32 100 --variants teacher teacher-all24 --out vggt.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import lite3r


def build(variant: str, base: torch.nn.Module) -> torch.nn.Module:
    if variant == "teacher":
        base.aggregator.keep_layers = frozenset({*base.config.dpt_layers, base.config.depth - 1})
        return base
    if variant == "teacher-all24":
        base.aggregator.keep_layers = None
        return base
    if variant.startswith("student-kh"):
        base.aggregator.keep_layers = frozenset({*base.config.dpt_layers, base.config.depth - 1})
        return lite3r.convert_to_sla(base, layers="global", kh=float(variant[len("student-kh"):]), kl=0.10)
    raise SystemExit(f"unknown variant {variant!r}")


@torch.no_grad()
def measure(model: torch.nn.Module, frames: int, size: int, reps: int, dtype: torch.dtype) -> dict:
    images = torch.rand(1, frames, 3, size, size, device="cuda")
    times = []
    for i in range(reps + 1):  # first run is the warm-up (kernel compilation, autotuning, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=dtype):
            out = model(images)
        end.record()
        torch.cuda.synchronize()
        if i:
            times.append(start.elapsed_time(end))
    finite = all(torch.isfinite(v).all().item() for k, v in out.items() if k in ("depth", "pose_enc"))
    return {
        "frames": frames,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "finite_outputs": finite,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[2, 8, 32, 100])
    ap.add_argument("--variants", nargs="+", default=["teacher", "teacher-all24"])
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="vggt")
    ap.add_argument("--out", default="bench_vggt.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    t0 = time.time()
    teacher = lite3r.load_model(args.model).cuda()
    build_s = time.time() - t0
    rows = []
    for variant in args.variants:
        model = build(variant, teacher)
        for frames in args.frames:
            try:
                row = measure(model, frames, args.size, args.reps, torch.bfloat16)
            except torch.OutOfMemoryError:
                row = {"frames": frames, "median_ms": float("nan"), "peak_mem_gib": float("nan"), "oom": True}
            row["variant"] = variant
            rows.append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
        if model is not teacher:
            del model
            torch.cuda.empty_cache()
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "size": args.size,
        "dtype": "bfloat16 autocast (heads float32, as official)",
        "model_build_s": build_s,
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"\n{meta['device']}  {args.size}x{args.size}  bf16 autocast  reps={args.reps}")
    print(f"{'variant':<16}{'frames':>7}{'median ms':>12}{'peak GiB':>10}")
    for r in rows:
        print(f"{r['variant']:<16}{r['frames']:>7}{r['median_ms']:>12.1f}{r['peak_mem_gib']:>10.2f}")


if __name__ == "__main__":
    main()
