"""``record.json``: how an output folder was made, enough to check and redo it.

Written last into the staging folder, so it describes exactly the files committed with it::

    {"format": "lite3r.record", "version": 1, "created": "2026-11-30T12:00:00+00:00",
     "command": "lite3r-export vggt-tiny --fp8 --out out/demo",
     "options": {...every argument of export_model...}, "seeds": {...},
     "versions": {"python": "3.11.7", "lite3r": "0.1.0", "torch": "2.13.0", ..., "tensorrt": null},
     "git": {"revision": "f9ee6e9...", "dirty": false} or null,
     "inputs": {"checkpoint": {"path": ..., "bytes": ...}} ,
     "artifacts": {"model.onnx": {"bytes": 2791234, "sha256": "..."}, ...}}

A package that is not installed has version ``null``; ``git`` is ``null`` outside a git checkout of lite3r.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RECORD = "record.json"
FORMAT = "lite3r.record"
VERSION = 1
# distribution names of everything that shapes an artifact
PACKAGES = {
    "lite3r": "lite3r", "torch": "torch", "triton": "triton", "numpy": "numpy", "onnx": "onnx",
    "onnxscript": "onnxscript", "onnxruntime": "onnxruntime", "modelopt": "nvidia-modelopt",
    "polygraphy": "polygraphy", "tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx-cu13-bindings",
}  # fmt: skip


class RecordError(ValueError):
    """A record that is missing, unreadable, or no longer matches its folder."""


def command_line() -> str:
    """The command as typed (program name without its path)."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def git_revision() -> dict[str, Any] | None:
    """The revision of the lite3r checkout this code runs from (and whether it has local changes), if any."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"revision": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_record(folder: Path, *, options: dict[str, Any], seeds: dict[str, Any], inputs: dict[str, Any]) -> dict:
    """The record of the files now in ``folder`` (hidden files and the record itself excluded)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != RECORD)
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "options": _plain(options),
        "seeds": _plain(seeds),
        "versions": package_versions(),
        "git": git_revision(),
        "inputs": _plain(inputs),
        "artifacts": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }


def write_record(folder: Path, record: dict) -> Path:
    path = folder / RECORD
    path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def read_record(folder: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read ``record.json`` of ``folder``; with ``verify``, every recorded artifact must be there unchanged."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{folder} has no {RECORD} (made by lite3r-export)") from None
    except (OSError, ValueError) as e:
        raise RecordError(f"cannot read {path}: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise RecordError(f"{path} is not a lite3r record (version {VERSION})")
    if verify:
        for name, expected in record.get("artifacts", {}).items():
            file = Path(folder) / name
            if not file.is_file():
                raise RecordError(f"{file} is recorded in {RECORD} but missing")
            if sha256(file) != expected["sha256"]:
                raise RecordError(f"{file} changed since it was recorded (SHA-256 differs from {RECORD})")
    return record


def _plain(value: Any) -> Any:
    """JSON-ready: paths and tuples become strings and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
