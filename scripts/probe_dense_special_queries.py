"""Probe (issue 12): does the SLA student lose its poses through the camera/register tokens' attention?

    PYTHONPATH=src python3 scripts/probe_dense_special_queries.py 0.05     # ~1 min on a CPU

On the shipped vggt-small teacher, 2 parity scenes (seeds 1000/1001) x 16 views of 224: rotation / translation
error (deg) and depth relative error of the untrained SLA student (proj_lin = 0) against the teacher, (1) as
converted, (2) with every frame's camera and register queries attended densely (an SDPA over all keys for those
5 rows per frame, written over the SLA rows), (3) as (2) with those tokens moved to the front and their key blocks
always critical on top of kh (emulated by patching the reference's block scores: a probe, not a product path).
"""
import math
import sys
import time

import torch
import torch.nn.functional as F

import lite3r
import lite3r.sla.reference as ref_mod
from lite3r.data.synthetic import make_scene
from lite3r.metrics import relative_pose_errors
from lite3r.sla.reference import block_counts

torch.manual_seed(0)
views, size = 16, 224
teacher = lite3r.load_model("vggt-small").eval()
P = teacher.aggregator.patch_start_idx + (size // 14) ** 2
NS = teacher.aggregator.patch_start_idx

class DenseSpecial(torch.nn.Module):
    def __init__(self, core, keys_too=False):
        super().__init__(); self.core = core; self.keys_too = keys_too
    def forward(self, q, k, v):
        out = self.core(q, k, v)
        L = q.shape[2]
        pos = torch.arange(L)
        idx = (pos % P < NS).nonzero().squeeze(1)
        out = out.clone()
        out[:, :, idx] = F.scaled_dot_product_attention(q[:, :, idx], k, v)
        return out

def run(model, scene):
    with torch.no_grad():
        return model(scene.images[None])

scenes = [make_scene(views, size, size, seed=s) for s in (1000, 1001)]
ref = [run(teacher, s) for s in scenes]
def errs(model):
    r = []
    for s, t in zip(scenes, ref):
        o = run(model, s)
        ext_s, _ = teacher.family.cameras({k: v[0] for k, v in o.items()}, (size, size))
        ext_t, _ = teacher.family.cameras({k: v[0] for k, v in t.items()}, (size, size))
        e = relative_pose_errors(ext_s, ext_t)
        d = ((o["depth"] - t["depth"]).abs() / t["depth"].abs().clamp_min(1e-6)).mean().item()
        r.append((e["rotation_error_deg"], e["translation_error_deg"], d))
    return [sum(x[i] for x in r) / len(r) for i in range(3)]

for kh in map(float, sys.argv[1:] or ["0.05"]):
    student = lite3r.convert_to_sla(teacher, layers="global", kh=kh, kl=0.10).eval()
    t0 = time.time(); print("kh", kh, "plain", errs(student), f"{time.time()-t0:.0f}s", flush=True)
    for blk in student.aggregator.global_blocks:
        blk.attn.core = DenseSpecial(blk.attn.core)
    print("kh", kh, "dense special queries", errs(student), flush=True)

orig_scores = ref_mod.block_scores
FORCED = {"n": 0}
def forced_scores(pq, pk):
    s = orig_scores(pq, pk)
    if FORCED["n"]:
        s = s.clone(); s[..., :FORCED["n"]] = 1e4
    return s
ref_mod.block_scores = forced_scores

class SpecialFirst(torch.nn.Module):
    """Specials permuted to the front; their key blocks always critical (on top of kh); their queries dense."""
    def __init__(self, core):
        super().__init__(); self.core = core
    def forward(self, q, k, v):
        L = q.shape[2]
        pos = torch.arange(L)
        special = (pos % P < NS)
        order = torch.cat([special.nonzero().squeeze(1), (~special).nonzero().squeeze(1)])
        inv = torch.argsort(order)
        qp, kp, vp = (t[:, :, order] for t in (q, k, v))
        n_sp = int(special.sum())
        nk = math.ceil(L / 64)
        base, _ = block_counts(nk, self.core.kh, self.core.kl)
        FORCED["n"] = math.ceil(n_sp / 64)
        kh0 = self.core.kh
        # enlarge kh so that n_critical = base + forced blocks
        self.core.kh = (base + FORCED["n"]) / nk
        try:
            out = self.core(qp, kp, vp)
        finally:
            self.core.kh = kh0; FORCED["n"] = 0
        out = out.clone()
        out[:, :, :n_sp] = F.scaled_dot_product_attention(qp[:, :, :n_sp], kp, vp)
        return out[:, :, inv]

for kh in map(float, sys.argv[1:] or ["0.05"]):
    student = lite3r.convert_to_sla(teacher, layers="global", kh=kh, kl=0.10).eval()
    for blk in student.aggregator.global_blocks:
        blk.attn.core = SpecialFirst(blk.attn.core)
    print("kh", kh, "specials first: forced critical + dense queries", errs(student), flush=True)
