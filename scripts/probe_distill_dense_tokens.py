"""Probe (issue 12): distillation on top of the dense camera/register tokens, CPU.

    PYTHONPATH=src python3 scripts/probe_distill_dense_tokens.py 60     # ~16 min on 2 busy CPU cores

The shipped vggt-small teacher, SLA kh 5 % (dense tokens: the VGGT default), proj_lin distilled for N steps
(lr 5e-3, no FP8) on 32 synthetic scenes of 8 views of 224; rotation / translation error (deg) against the
teacher on the 2 export parity scenes (seeds 1000/1001) x 16 views, before and after.
"""
import sys
import time

import torch

import lite3r
from lite3r.data.synthetic import make_scene
from lite3r.distill import DistillConfig, distill
from lite3r.metrics import relative_pose_errors

torch.manual_seed(0)
size = 224
teacher = lite3r.load_model("vggt-small").eval()
evals = [make_scene(16, size, size, seed=s) for s in (1000, 1001)]
def errs(model):
    r = []
    for s in evals:
        with torch.no_grad():
            o, t = model(s.images[None]), teacher(s.images[None])
        es, _ = teacher.family.cameras({k: v[0] for k, v in o.items()}, (size, size))
        et, _ = teacher.family.cameras({k: v[0] for k, v in t.items()}, (size, size))
        e = relative_pose_errors(es, et)
        r.append((e["rotation_error_deg"], e["translation_error_deg"]))
    return [round(sum(x[i] for x in r) / len(r), 2) for i in range(2)]
steps = int(sys.argv[1])
train = [make_scene(8, size, size, seed=s) for s in range(32)]
student = lite3r.convert_to_sla(teacher, kh=0.05)
print("untrained", errs(student.eval()), flush=True)
t0 = time.time()
res = distill(teacher, student, train, steps, fp8_qat=False, config=DistillConfig(lr=5e-3))
print(f"{steps} steps ({time.time()-t0:.0f}s)", errs(res.student.eval()), flush=True)
