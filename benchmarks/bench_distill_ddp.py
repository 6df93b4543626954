"""Distillation on 1 and 2 GPUs: step time, scaling efficiency and peak memory per GPU, DDP and FSDP2.

The driver renders the scenes once, then launches ``torchrun --standalone --nproc_per_node N`` on this same
script (``--worker``) for every (N, parallel) asked for; each worker runs ``lite3r.distill.distill`` exactly as
``lite3r distill`` does under torchrun. Setting (defaults): VGGT-1B with random weights (seed 0), SLA student
(global layers, kh 5 %, kl 10 %), ``--frames 8`` views of 518x518 per scene, global batch ``--batch-size 4``
scenes per optimizer step (1 GPU: 4 micro-batches; 2 GPUs: 2 each), bf16 autocast, no FP8 (``--fp8`` for QAT,
which needs ModelOpt). Step time = median of rank 0's ``time_s`` over ``--steps`` steps after ``--warmup``
(each step ends with the loss all-reduce, so it is the slowest rank's). Scaling efficiency (strong scaling,
same global batch) = ``t(1 GPU) / (N * t(N GPUs))`` for the same ``parallel``. Peak memory =
``torch.cuda.max_memory_allocated`` per GPU during training (both models' weights included: 4.7 GiB each in
float32, divided by N under FSDP2).

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
      PYTHONPATH=src python3 benchmarks/bench_distill_ddp.py --out "$OUT/distill_ddp.json"   # 2 GPUs, < 8 min
    PYTHONPATH=src python3 benchmarks/bench_distill_ddp.py --smoke --out /tmp/ddp.json    # CPU, gloo, vggt-tiny

NVLink multicast stays off: the driver sets those three variables for every process it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
RUNS = ("1:ddp", "2:ddp", "2:fsdp", "1:fsdp")  # most wanted first, in case the time budget runs out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vggt")
    parser.add_argument("--frames", type=int, default=8, help="views per scene")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--scenes", type=int, default=2, help="distinct scenes rendered (cycled)")
    parser.add_argument("--batch-size", type=int, default=4, help="scenes per optimizer step, all GPUs together")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (Triton compiles, allocator)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help="GPUS:PARALLEL, e.g. 2:fsdp")
    parser.add_argument("--fp8", action="store_true", help="FP8 QAT (ModelOpt) instead of bf16 only")
    parser.add_argument("--budget", type=int, default=420, help="seconds for all launches together (then stop)")
    parser.add_argument("--out", required=True, help="results JSON; each run's log is written beside it")
    parser.add_argument("--smoke", action="store_true", help="CPU processes (gloo), vggt-tiny, tiny sizes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    parser.add_argument("--scene-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.frames, args.size, args.scenes, args.batch_size, args.steps, args.warmup = (
            "vggt-tiny", 2, 56, 2, 2, 2, 1
        )  # fmt: skip
    if args.worker:
        worker(args)
    else:
        drive(args)


def drive(args: argparse.Namespace) -> None:
    import torch

    from lite3r.data import SyntheticScenes

    started = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    results: dict = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        scene_file = Path(tmp) / "scenes.pt"
        scenes = SyntheticScenes(args.scenes, args.frames, args.size, args.size, seed=0)
        torch.save(torch.stack([scene.images for scene in scenes]), scene_file)
        print(f"rendered {args.scenes} scenes of {args.frames} views in {time.perf_counter() - started:.0f} s",
              flush=True)
        for run in args.runs:
            gpus, parallel = run.split(":")
            name = f"{gpus}gpu_{parallel}"
            run_json = Path(tmp) / f"{name}.json"
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", gpus, __file__,
                "--worker", "--parallel", parallel, "--scene-file", str(scene_file), "--out", str(run_json),
                "--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                "--warmup", str(args.warmup), *(["--fp8"] if args.fp8 else []), *(["--smoke"] if args.smoke else []),
            ]  # fmt: skip
            log = out.with_name(f"{out.stem}_{name}.log")
            launched = time.perf_counter()
            timeout = started + args.budget - launched
            try:
                if timeout < 30:
                    raise subprocess.TimeoutExpired(command, timeout)
                with open(log, "w") as f:
                    done = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
                status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode}, see {log.name})"
            except subprocess.TimeoutExpired:
                status = f"not run or not finished: --budget {args.budget} s spent (see {log.name})"
            record = json.loads(run_json.read_text()) if status == "ok" else {}
            results["runs"][name] = {"status": status, "wall_s": time.perf_counter() - launched, **record}
            print(f"{name}: {status} ({time.perf_counter() - launched:.0f} s)", flush=True)
            out.write_text(json.dumps(results, indent=1))  # keep what finished if a later run hangs
    add_scaling(results)
    results["wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(results, indent=1))
    print_table(results)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import lite3r
    from lite3r.distill import DistillConfig, distill
    from lite3r.distill.distributed import current_world, process_group

    with process_group("cpu" if args.smoke else "cuda") as device:
        world = current_world()
        torch.manual_seed(0)
        with torch.device(device):  # random weights drawn on the GPU: seconds instead of a minute on the CPU
            teacher = lite3r.load_model(args.model).to(device).eval()
        student = lite3r.convert_to_sla(teacher, layers="global", kh=0.05, kl=0.10)
        data = list(torch.load(args.scene_file, weights_only=True))
        config = DistillConfig(batch_size=args.batch_size, parallel=args.parallel)
        result = distill(teacher, student, data, args.warmup + args.steps, fp8_qat=args.fp8, config=config)
        peaks = [None] * world.size
        dist.all_gather_object(peaks, result.peak_memory_bytes)
        if world.is_main:
            times = [r["time_s"] for r in result.history[args.warmup :]]
            record = {
                "gpus": world.size,
                "parallel": args.parallel,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "step_time_s": statistics.median(times),
                "step_times_s": times,
                "scenes_per_s": args.batch_size / statistics.median(times),
                "peak_memory_gib": [p / 2**30 if p is not None else None for p in peaks],
                "loss": [r["loss"] for r in result.history],
            }
            Path(args.out).write_text(json.dumps(record))


def add_scaling(results: dict) -> None:
    runs = results["runs"]
    for name, run in runs.items():
        one = runs.get(f"1gpu_{run.get('parallel')}")
        if run.get("step_time_s") and one and one.get("step_time_s"):
            run["speedup"] = one["step_time_s"] / run["step_time_s"]
            run["scaling_efficiency"] = run["speedup"] / run["gpus"]
            # the same training on any number of GPUs: the losses agree up to bf16 / reduction-order rounding
            run["loss_max_rel_diff_vs_1gpu"] = max(abs(a - b) / abs(b) for a, b in zip(run["loss"], one["loss"]))


def print_table(results: dict) -> None:
    a = results["args"]
    first = next((r for r in results["runs"].values() if "device" in r), {})
    print(f"\n{first.get('device', '?')}, torch {results['torch']}, {results['date']}, {a['model']}, {a['frames']} "
          f"views {a['size']}x{a['size']}, batch {a['batch_size']} scenes/step, {a['steps']} timed steps after "
          f"{a['warmup']}, FP8 QAT: {a['fp8']}, {results['wall_s']:.0f} s in all")  # fmt: skip
    print("\n| GPUs | parallel | step s | scenes/s | speedup | scaling eff. | peak GiB per GPU | loss rel. diff "
          "vs 1 GPU | status |")
    print("|---:|---|---:|---:|---:|---:|---|---:|---|")
    for name, run in results["runs"].items():
        if "step_time_s" not in run:
            gpus, parallel = name.split("gpu_")
            print(f"| {gpus} | {parallel} | | | | | | | {run['status']} |")
            continue
        peaks = ", ".join(f"{p:.1f}" for p in run["peak_memory_gib"] if p is not None) or "-"
        scaling = (f"{run['speedup']:.2f}x | {run['scaling_efficiency']:.0%} | {peaks} | "
                   f"{run['loss_max_rel_diff_vs_1gpu']:.1e}") if "speedup" in run else f"- | - | {peaks} | -"
        print(f"| {run['gpus']} | {run['parallel']} | {run['step_time_s']:.3f} | {run['scenes_per_s']:.2f} | "
              f"{scaling} | ok |")  # fmt: skip


if __name__ == "__main__":
    main()
