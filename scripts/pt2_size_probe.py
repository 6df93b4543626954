"""Does AOTInductor load a package of more than 2 GiB on this machine? (issue 11: the VGGT-1B student's 2.3 GB
``.pt2`` segfaulted inside ``aoti_load_package`` on the H200, torch 2.11, 2026-11-30.)

    python3 scripts/pt2_size_probe.py --device cuda --gb 2.2     # then --gb 1.5: under the 2 GiB line

A plain stack of linears (no SLA, no Triton op) of about ``--gb`` GB of float32 weights is exported, compiled to a
package and loaded in a fresh process; the fresh process's return code (negative: killed by that signal) and its
output error against eager are printed. A crash above 2 GiB and none below points at the package size, not at
the SLA op; no crash at either size points at the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FRESH = r"""
import faulthandler, json, sys
import torch
faulthandler.enable()
model = torch._inductor.aoti_load_package(sys.argv[1])
x, expected = torch.load(sys.argv[2])
print(json.dumps({"max_abs_error": (model(x) - expected).abs().max().item()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.2, help="float32 weights, GB")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    width = 4096
    layers = max(1, round(args.gb * 1e9 / (4 * width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).eval()
    model.to(args.device)
    x = torch.randn(2, width, device=args.device) / width**0.5
    with torch.no_grad():
        expected = model(x)
    with tempfile.TemporaryDirectory() as folder:
        package, data = Path(folder) / "probe.pt2", Path(folder) / "io.pt"
        start = time.perf_counter()
        program = torch.export.export(model, (x,))
        torch._inductor.aoti_compile_and_package(program, package_path=str(package))
        compile_s = time.perf_counter() - start
        torch.save((x, expected), data)
        done = subprocess.run([sys.executable, "-c", FRESH, str(package), str(data)], capture_output=True, text=True)
        result = {
            "weights_gb": layers * 4 * width * width / 1e9,
            "package_bytes": package.stat().st_size,
            "compile_s": round(compile_s, 1),
            "returncode": done.returncode,
            "fresh": json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else done.stderr[-1500:],
            "torch": torch.__version__,
        }
    print(json.dumps(result, indent=1))
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
