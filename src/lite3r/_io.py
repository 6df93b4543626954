"""Output handling shared by every stage: nothing half-written on failure.

Each stage writes into a hidden staging folder next to the destination and moves the finished files into
place only when the whole stage succeeded, so a crash or a bad input never leaves partial artifacts.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class OutputError(ValueError):
    """The output location cannot be used."""


def check_writable_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and check that files can be created in it (fail before any work is done)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {out} is not writable")
    return out


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``out`` (replacing same-named files).

    On any exception the staging folder is removed and ``out`` keeps exactly what it had before.
    """
    out = check_writable_dir(out)
    stage = Path(tempfile.mkdtemp(prefix=".lite3r-stage-", dir=out))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN, and a metric that is undefined
    for the data (pose errors of a single frame) is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
