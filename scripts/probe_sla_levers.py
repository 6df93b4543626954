"""Probe (issue 12): do the SLA options help proj_lin distillation recover the teacher's poses at kh 5 %?

    PYTHONPATH=src python3 scripts/probe_sla_levers.py kl0 elu block32      # ~2 min per option, block32 ~11

Same recipe and metric as ``scripts/probe_dense_tokens.py --distill-steps 60`` (the shipped vggt-small teacher,
student with dense camera/register rows, 60 steps at lr 5e-3 on 32 scenes of 8 views, no FP8; errors against the
teacher on the 2 export parity scenes x 16 views of 224): each named option changes one SLA setting from the
default (kh 5 %, kl 10 %, blocks of 64, softmax feature map) and is scored untrained and distilled. ``block32``
lets the reference run 32-token blocks, which the kernels do not take: a probe, not a product path.
"""

from __future__ import annotations

import argparse
import time

import torch

import lite3r
import lite3r.sla.reference as reference
from lite3r.data.synthetic import make_scene
from lite3r.distill import DistillConfig, distill, gap_to_teacher

OPTIONS = {
    "default": {},
    "kl0": dict(kl=0.0),  # no negligible block: every non-critical block goes through the linear branch
    "elu": dict(feature_map="elu"),
    "relu": dict(feature_map="relu"),
    "block32": dict(block_q=32, block_k=32),  # twice the key blocks: kh picks 7 of 131 instead of 4 of 66
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("options", nargs="+", choices=OPTIONS)
    args = parser.parse_args()
    reference.BLOCK_SIZES = (32, *reference.BLOCK_SIZES)
    teacher = lite3r.load_model("vggt-small").eval()
    scenes = [make_scene(16, 224, 224, seed=seed) for seed in (1000, 1001)]
    train = [make_scene(8, 224, 224, seed=seed) for seed in range(32)]

    def report(label: str, student: torch.nn.Module) -> None:
        gap = gap_to_teacher(teacher, student.eval(), scenes, bf16=False)
        print(f"{label}: rotation {gap['rotation_error_deg']:.2f} deg, translation {gap['translation_error_deg']:.2f} "
              f"deg, depth AbsRel {gap['depth_abs_rel']:.4f}", flush=True)  # fmt: skip

    for name in args.options:
        torch.manual_seed(0)
        student = lite3r.convert_to_sla(teacher, kh=0.05, **OPTIONS[name])
        report(f"{name} untrained", student)
        start = time.perf_counter()
        result = distill(teacher, student, train, 60, fp8_qat=False, config=DistillConfig(lr=5e-3))
        report(f"{name} after 60 steps ({time.perf_counter() - start:.0f} s)", result.student)


if __name__ == "__main__":
    main()
