"""Export a VGGT-1B SLA student to ONNX and check onnxruntime (CPU) against the PyTorch student in float32.

Builds the preset (default ``vggt``, VGGT-1B) with seeded random weights, converts its global-attention layers to
SLA, exports it with ``lite3r.exporter.export_onnx`` (external data above 2 GB), then runs the same synthetic
scene through onnxruntime's CPU provider and through PyTorch and prints, per output, the largest absolute error
and that error relative to the output's largest magnitude, plus the timings. Writes ``model.onnx`` (+ ``.data``)
and ``parity.json`` into ``--out``; exits with status 1 when a relative error exceeds ``--rtol``.

Random weights would hide branches behind VGGT's tiny initial scales, so LayerScale gammas are redrawn from
U(0.1, 0.5) and SLA's ``proj_lin`` (zero in a fresh student) from N(0, 0.02).

    python scripts/export_vggt1b_parity.py --out /tmp/vggt1b-onnx
    python scripts/export_vggt1b_parity.py --model vggt-tiny --image-size 112 --out /tmp/tiny-onnx
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import lite3r
from lite3r.data import make_scene
from lite3r.exporter import export_onnx


def build_student(name: str, layers: str, kh: float, kl: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    student = lite3r.convert_to_sla(lite3r.load_model(name).eval(), layers=layers, kh=kh, kl=kl)
    with torch.no_grad():
        for param_name, param in student.named_parameters():
            if param_name.endswith(".gamma"):
                param.uniform_(0.1, 0.5)
            elif ".proj_lin." in param_name:
                param.normal_(0.0, 0.02)
    return student.requires_grad_(False)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for model.onnx(.data) and parity.json")
    parser.add_argument("--model", default="vggt", choices=lite3r.list_models())
    parser.add_argument("--image-size", type=int, default=518, help="square H = W, a multiple of 14")
    parser.add_argument("--frames", type=int, nargs="+", default=[2],
                        help="frame counts to compare; the export traces the first")  # fmt: skip
    parser.add_argument("--layers", default="global", choices=("global", "all"))
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-3, help="largest accepted |error| / max|output| per output")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    student, build_s = timed(build_student, args.model, args.layers, args.kh, args.kl, args.seed)
    print(f"built {args.model} SLA student ({sum(p.numel() for p in student.parameters()) / 1e6:.2f} M parameters) "
          f"in {build_s:.1f} s")  # fmt: skip
    path = args.out / "model.onnx"
    report = export_onnx(student, path, image_size=args.image_size, example_frames=args.frames[0])
    print(f"exported: {report.summary()}")
    session, session_s = timed(ort.InferenceSession, str(path), providers=["CPUExecutionProvider"])
    print(f"onnxruntime session created in {session_s:.1f} s")

    results = {"model": args.model, "image_size": args.image_size, "export": {
        "seconds": report.seconds, "file_bytes": report.file_bytes, "external_data": report.external_data is not None,
        "nodes": report.nodes, "sla_nodes": report.sla_nodes}, "session_seconds": session_s, "runs": []}  # fmt: skip
    worst = 0.0
    for frames in args.frames:
        images = make_scene(frames, args.image_size, args.image_size, seed=args.seed).images[None]
        with torch.no_grad():
            expected, torch_s = timed(student, images)
        names = student.family.outputs
        actual, onnx_s = timed(session.run, list(names), {"images": images.numpy()})
        print(f"\n{frames} frames of {args.image_size}x{args.image_size}: PyTorch {torch_s:.2f} s, "
              f"onnxruntime {onnx_s:.2f} s")  # fmt: skip
        print(f"  {'output':<18} {'max |err|':>11} {'max |ref|':>11} {'rel':>10}")
        errors = {}
        for name, value in zip(names, actual):
            reference = expected[name].numpy()
            abs_err = float(np.abs(value - reference).max())
            scale = float(np.abs(reference).max())
            rel = abs_err / scale if scale else abs_err
            worst = max(worst, rel) if np.isfinite(rel) else float("inf")
            errors[name] = {"max_abs": abs_err, "max_ref": scale, "rel": rel}
            print(f"  {name:<18} {abs_err:11.3e} {scale:11.3e} {rel:10.2e}")
        results["runs"].append({"frames": frames, "torch_seconds": torch_s, "onnx_seconds": onnx_s, "errors": errors})

    (args.out / "parity.json").write_text(json.dumps(results, indent=1) + "\n")
    verdict = "PASS" if worst <= args.rtol else "FAIL"
    print(f"\n{verdict}: largest relative error {worst:.2e} (rtol {args.rtol:g}); wrote {args.out / 'parity.json'}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
