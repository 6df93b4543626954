"""Build ``run_pt2`` (a C++ program using ``torch::inductor::AOTIModelPackageLoader``) against the installed torch
wheel with g++, run a lite3r ``model.pt2`` with it, and compare its outputs with the Python loader's.

    python scripts/pt2_cpp/check_cpp_loader.py out/model.pt2 --frames 4 [--build-dir /tmp/pt2_cpp] [--json r.json]

Exit status 0 when the program compiled, ran, and matched (max relative error per output <= 1e-4). Needs only
torch (no lite3r): the check is what a C++ deployment does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

SOURCE = Path(__file__).with_name("run_pt2.cpp")
TOLERANCE = 1e-4


def compile_command(binary: Path, cuda: bool) -> list[str]:
    """The g++ line: torch's headers and libraries (libtorch_cuda too for CUDA packages: its runner lives there)."""
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libraries = [f"-L{p}" for p in cpp_extension.library_paths()]
    rpath = [f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()]
    links = ["-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", *(["-ltorch_cuda", "-lc10_cuda"] if cuda else [])]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return ["g++", "-std=c++17", "-O1", abi, str(SOURCE), *includes, *libraries, *rpath, *links, "-o", str(binary)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--build-dir", type=Path, default=Path(tempfile.gettempdir()) / "lite3r_pt2_cpp")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    result: dict = {"package": str(args.package), "frames": args.frames, "compiled": False, "ran": False}

    model = torch._inductor.aoti_load_package(str(args.package))
    metadata = model.get_metadata()
    cuda = metadata["lite3r.device"] == "cuda"
    args.build_dir.mkdir(parents=True, exist_ok=True)
    binary = args.build_dir / "run_pt2"
    command = compile_command(binary, cuda)
    built = subprocess.run(command, capture_output=True, text=True)
    result["compile_command"] = " ".join(command)
    result["compiled"] = built.returncode == 0
    if not result["compiled"]:
        result["error"] = built.stderr[-2000:]
        return _finish(result, args.json)

    height, width = (int(s) for s in metadata["lite3r.image_size"].split("x"))
    images = torch.rand(1, args.frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    images.numpy().tofile(args.build_dir / "images.bin")
    device = "cuda" if cuda else "cpu"
    with torch.inference_mode():
        expected = model(images.to(device))
    for name, value in expected.items():
        value.float().cpu().numpy().tofile(args.build_dir / f"expected.{name}.bin")
    ran = subprocess.run(
        [str(binary), str(args.package), str(args.frames), str(args.build_dir / "images.bin"),
         str(args.build_dir / "expected")],
        capture_output=True, text=True,
    )  # fmt: skip
    result["ran"] = ran.returncode == 0
    result["stdout"] = ran.stdout
    if not result["ran"]:
        result["error"] = ran.stderr[-2000:]
        return _finish(result, args.json)
    errors = {line.split()[0]: float(line.split()[-1]) for line in ran.stdout.splitlines() if "max_rel_error" in line}
    result["max_rel_error"] = errors
    result["ms_per_run"] = float(ran.stdout.split("ms_per_run")[-1])
    result["matched"] = set(errors) == set(expected) and max(errors.values()) <= TOLERANCE
    return _finish(result, args.json)


def _finish(result: dict, json_path: Path | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")
    return 0 if result.get("matched") else 1


if __name__ == "__main__":
    sys.exit(main())
