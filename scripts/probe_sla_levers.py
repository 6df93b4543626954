"""Probe (issue 12): do the SLA options, or more trainable parameters, help distillation recover the teacher's
poses at kh 5 %?

    PYTHONPATH=src python3 scripts/probe_sla_levers.py kl0 elu block32      # ~2 min per option, block32 ~11
    PYTHONPATH=src python3 scripts/probe_sla_levers.py per-head attn-proj   # capacity: more than one proj_lin

Same recipe and metric as ``scripts/probe_dense_tokens.py --distill-steps 60`` (the shipped vggt-small teacher,
student with dense camera/register rows, 60 steps at lr 5e-3 on 32 scenes of 8 views, no FP8; errors against the
teacher on the 2 export parity scenes x 16 views of 224): each named option changes one SLA setting from the
default (kh 5 %, kl 10 %, blocks of 64, softmax feature map) and is scored untrained and distilled. ``block32``
lets the reference run 32-token blocks, which the kernels do not take: a probe, not a product path.
Two capacity options keep the SLA defaults and train more: ``per-head`` gives every head its own ``proj_lin``
(``[H, D, D]``; the op runs twice, with a zero and an identity projection, to get the linear branch alone),
``attn-proj`` also trains the SLA layers' attention output projections (``attn.proj``), ``global-mlp`` the MLPs
of the blocks around them, ``camera-head`` the camera head (lr 1e-3 for all three).
"""

from __future__ import annotations

import argparse
import time

import torch

import lite3r
import lite3r.sla.reference as reference
from lite3r.data.synthetic import make_scene
from lite3r.distill import DistillConfig, distill, gap_to_teacher
from lite3r.sla.module import SparseLinearAttention, dense_frame_rows
from lite3r.sla.op import sparse_linear_attention

OPTIONS = {
    "default": {},
    "kl0": dict(kl=0.0),  # no negligible block: every non-critical block goes through the linear branch
    "elu": dict(feature_map="elu"),
    "relu": dict(feature_map="relu"),
    "block32": dict(block_q=32, block_k=32),  # twice the key blocks: kh picks 7 of 131 instead of 4 of 66
    "per-head": {},
    "attn-proj": {},
    "global-mlp": {},
    "camera-head": {},
}


class PerHeadProjection(SparseLinearAttention):
    """SLA whose linear branch is projected per head: ``out = sparse + linear @ W_h^T + b_h``."""

    def forward(self, q, k, v, frames=None):
        dim = q.shape[-1]
        zero = q.new_zeros(dim)
        sparse = sparse_linear_attention(q, k, v, q.new_zeros(dim, dim), zero, **self.options, backend=self.backend)
        full = sparse_linear_attention(q, k, v, torch.eye(dim, dtype=q.dtype), zero, **self.options,
                                       backend=self.backend)  # fmt: skip
        out = sparse + torch.einsum("bhld,hed->bhle", full - sparse, self.proj_lin.weight)
        out = out + self.proj_lin.bias[None, :, None, :]
        return dense_frame_rows(out, q, k, v, self.dense_tokens, 1 if frames is None else frames)


def with_capacity(student: torch.nn.Module, name: str) -> DistillConfig:
    """Apply a capacity option to ``student`` in place; the distillation settings it needs."""
    if name == "per-head":
        for attention in student.modules():
            if isinstance(getattr(attention, "core", None), SparseLinearAttention):
                heads, dim = attention.num_heads, attention.head_dim
                attention.core.__class__ = PerHeadProjection
                attention.core.proj_lin.weight = torch.nn.Parameter(torch.zeros(heads, dim, dim))
                attention.core.proj_lin.bias = torch.nn.Parameter(torch.zeros(heads, dim))
        return DistillConfig(lr=5e-3)
    if name in ("attn-proj", "global-mlp"):
        for block in student.aggregator.global_blocks:
            (block.attn.proj if name == "attn-proj" else block.mlp).requires_grad_(True)
        return DistillConfig(lr=1e-3, trainable="all")
    if name == "camera-head":
        student.camera_head.requires_grad_(True)
        return DistillConfig(lr=1e-3, trainable="all")
    return DistillConfig(lr=5e-3)


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
        config = with_capacity(student, name)
        report(f"{name} untrained", student)
        start = time.perf_counter()
        result = distill(teacher, student, train, 60, fp8_qat=False, config=config)
        report(f"{name} after 60 steps ({time.perf_counter() - start:.0f} s)", result.student)


if __name__ == "__main__":
    main()
