"""Does distillation close the student-teacher gap? Gap before and after N steps, time per step, memory.

The teacher is the model with random weights (seed 0); the student is ``convert_to_sla(teacher)`` (global
layers, ``--kh``, kl 0.10). Training data: ``--train-scenes`` synthetic scenes of ``--views`` views at
``--size`` (rendered once, cycled); held-out: ``--eval-scenes`` other scenes. The gap is
``lite3r.distill.gap_to_teacher`` (depth AbsRel and relative-pose errors with the teacher's outputs as the
truth), measured for:

- ``sla``: the untrained student (proj_lin = 0, i.e. block-sparse attention);
- ``sla+fp8-ptq``: the same, FP8-calibrated without training (with ``--fp8``);
- ``distilled``: after ``--steps`` steps of ``lite3r.distill.distill`` (FP8 QAT with ``--fp8``).

    PYTHONPATH=src python3 benchmarks/bench_distill.py --steps 60 --out distill.json                 # CUDA, VGGT-1B
    PYTHONPATH=src python3 benchmarks/bench_distill.py --model vggt-tiny --views 4 --size 112 --steps 100
    PYTHONPATH=src python3 benchmarks/bench_distill.py --smoke                                       # CPU, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time

import torch

import lite3r
from lite3r.calibration import calibrate_fp8
from lite3r.data import SyntheticScenes
from lite3r.distill import DistillConfig, distill, gap_to_teacher

SHOWN = ("depth_abs_rel", "rotation_error_deg", "translation_error_deg", "pose_enc_l1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vggt")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--train-scenes", type=int, default=8)
    parser.add_argument("--eval-scenes", type=int, default=4)
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=DistillConfig().lr)
    parser.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=True, help="FP8 QAT (default on)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--out", help="write the full results (with the per-step log) as JSON here")
    parser.add_argument("--smoke", action="store_true", help="CPU, vggt-tiny, tiny sizes: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.steps, args.views, args.size, args.train_scenes, args.eval_scenes = "vggt-tiny", 3, 2, 28, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    started = time.perf_counter()

    torch.manual_seed(0)
    teacher = lite3r.load_model(args.model).to(device).eval()
    student = lite3r.convert_to_sla(teacher, layers="global", kh=args.kh, kl=0.10)
    train = list(SyntheticScenes(args.train_scenes, args.views, args.size, args.size, seed=0))
    held_out = list(SyntheticScenes(args.eval_scenes, args.views, args.size, args.size, seed=1))
    gaps = {"sla": gap_to_teacher(teacher, student, held_out)}
    if args.fp8:
        ptq = calibrate_fp8(copy.deepcopy(student), train, num_batches=DistillConfig().calibration_batches)
        gaps["sla+fp8-ptq"] = gap_to_teacher(teacher, ptq, held_out)
        del ptq
    config = DistillConfig(lr=args.lr, grad_checkpointing=args.grad_checkpointing)
    with tempfile.TemporaryDirectory() as out_dir:  # exercises the checkpoint writes the real runs do
        run = distill(teacher, student, train, args.steps, fp8_qat=args.fp8, config=config, out_dir=out_dir,
                      resume=False, progress=True)  # fmt: skip
    gaps["distilled"] = gap_to_teacher(teacher, run.student, held_out)
    step_times = [r["time_s"] for r in run.history[min(2, len(run.history) - 1):]]  # skip warm-up steps
    result = {
        "args": vars(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "gaps": gaps,
        "step_time_s_median": statistics.median(step_times),
        "peak_memory_gib": run.peak_memory_bytes / 2**30 if run.peak_memory_bytes is not None else None,
        "loss_first": run.history[0]["loss"],
        "loss_last": run.history[-1]["loss"],
        "history": run.history,
        "wall_s": time.perf_counter() - started,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print_table(result)


def print_table(result: dict) -> None:
    a = result["args"]
    memory = f"{result['peak_memory_gib']:.2f} GiB peak" if result["peak_memory_gib"] is not None else "CPU"
    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}, {a['model']}, {a['views']} views "
          f"{a['size']}x{a['size']}, {a['steps']} steps (fp8 QAT: {a['fp8']}), "
          f"{result['step_time_s_median'] * 1e3:.0f} ms/step, {memory}, loss {result['loss_first']:.4g} -> "
          f"{result['loss_last']:.4g}, {result['wall_s']:.0f} s")
    print("\n| student vs teacher (held out) | " + " | ".join(SHOWN) + " |")
    print("|---|" + "---:|" * len(SHOWN))
    for name, gap in result["gaps"].items():
        print(f"| {name} | " + " | ".join(f"{gap[k]:.4g}" for k in SHOWN) + " |")


if __name__ == "__main__":
    main()
