"""Probe (issue 12): where the SLA student loses the teacher's poses, and what dense summary tokens recover.

    PYTHONPATH=src python3 scripts/probe_dense_tokens.py                      # ~2 min on a CPU
    PYTHONPATH=src python3 scripts/probe_dense_tokens.py --distill-steps 60   # + distillation, ~15 min

On the shipped vggt-small teacher, the 2 export parity scenes (seeds 1000/1001) x 16 views of 224, errors of the
untrained SLA student against the teacher (``lite3r.distill.gap_to_teacher``, float32): (1) plain SLA
(``dense_tokens=0``); (2) the default student, whose camera and register tokens attend densely; (3) as (2) with
those tokens moved to the front and their key blocks always critical on top of kh (emulated by patching the
reference's block scores: a probe, not a product path). ``--distill-steps N`` then distills (2)'s proj_lin for N
steps (lr 5e-3, no FP8) on 32 scenes of 8 views and scores it again.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import lite3r
import lite3r.sla.reference as reference
from lite3r.data.synthetic import make_scene
from lite3r.distill import DistillConfig, distill, gap_to_teacher
from lite3r.sla.module import dense_frame_rows

SIZE = 224


class SummaryKeysCritical(nn.Module):
    """A plain SLA core run on tokens reordered summary-first, with the summary tokens' key blocks forced critical
    (in addition to kh's count) and their queries attended densely."""

    def __init__(self, core: nn.Module, summary: int) -> None:
        super().__init__()
        self.core, self.summary = core, summary

    def forward(self, q, k, v, frames=None):
        length = q.shape[2]
        is_summary = torch.arange(length) % (length // (frames or 1)) < self.summary
        order = torch.cat((is_summary.nonzero()[:, 0], (~is_summary).nonzero()[:, 0]))
        q, k, v = (t[:, :, order] for t in (q, k, v))
        rows = int(is_summary.sum())
        forced, key_blocks = math.ceil(rows / self.core.block_k), math.ceil(length / self.core.block_k)
        critical, _ = reference.block_counts(key_blocks, self.core.kh, self.core.kl)
        block_scores = reference.block_scores

        def forced_scores(pooled_q, pooled_k):
            scores = block_scores(pooled_q, pooled_k).clone()
            scores[..., :forced] = 1e4
            return scores

        kh, self.core.kh = self.core.kh, (critical + forced) / key_blocks
        reference.block_scores = forced_scores
        try:
            out = self.core(q, k, v)
        finally:
            self.core.kh, reference.block_scores = kh, block_scores
        return dense_frame_rows(out, q, k, v, rows, 1)[:, :, torch.argsort(order)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--distill-steps", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-small").eval()
    scenes = [make_scene(16, SIZE, SIZE, seed=seed) for seed in (1000, 1001)]

    def report(label: str, student: nn.Module) -> None:
        gap = gap_to_teacher(teacher, student.eval(), scenes, bf16=False)
        print(f"{label}: rotation {gap['rotation_error_deg']:.2f} deg, translation {gap['translation_error_deg']:.2f} "
              f"deg, depth AbsRel {gap['depth_abs_rel']:.4f}", flush=True)  # fmt: skip

    report("plain SLA", lite3r.convert_to_sla(teacher, kh=args.kh, dense_tokens=0))
    student = lite3r.convert_to_sla(teacher, kh=args.kh)
    report("dense summary tokens (default)", student)
    forced = lite3r.convert_to_sla(teacher, kh=args.kh, dense_tokens=0)
    for block in forced.aggregator.global_blocks:
        block.attn.core = SummaryKeysCritical(block.attn.core, teacher.family.summary_tokens)
    report("summary tokens first, their key blocks critical", forced)
    if args.distill_steps:
        train = [make_scene(8, SIZE, SIZE, seed=seed) for seed in range(32)]
        start = time.perf_counter()
        result = distill(teacher, student, train, args.distill_steps, fp8_qat=False, config=DistillConfig(lr=5e-3))
        report(f"dense, after {args.distill_steps} steps ({time.perf_counter() - start:.0f} s)", result.student)


if __name__ == "__main__":
    main()
