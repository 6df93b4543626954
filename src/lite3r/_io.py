"""Output handling shared by every stage: nothing half-written on failure, nothing stale after success.

A stage writes its whole set of files into a hidden staging folder inside the destination
(``.lite3r-stage-<pid>-*``) and commits it when the stage succeeded:

- **Manifest.** ``.lite3r-manifest.json`` records which files each writer (``lite3r-export``, ``parity``,
  ``export:model.onnx`` ...) put there. A commit replaces the writer's earlier set: files it wrote last time and
  not this time are removed (an old ``model.engine`` next to a new ``model.onnx``); files it never wrote (the
  user's, another writer's) are left alone.
- **Order.** Data files first, then the graphs that name them (``model.onnx.data`` before ``model.onnx``).
- **Modes.** Every committed file gets the mode a plain ``open()`` would give it (0644 under umask 022), also
  those a library wrote with ``mkstemp``'s 0600.
- **Interrupts.** SIGINT/SIGTERM/SIGHUP are held back while a commit runs and delivered after it, so Ctrl-C
  leaves the folder as it was before the commit, or complete after it. The commit writes its plan into the
  staging folder first; a run killed with SIGKILL leaves that folder behind, and the next staged write to the
  same destination rolls a planned commit forward or deletes an unplanned one (only folders of processes that
  are gone).
- **No empty folders.** The destination (and parents) are created when staging starts and removed again if
  the stage fails and they are still empty.

The commit is a sequence of ``os.replace`` calls, not a swap of the whole folder: swapping needs write access
to the parent and would have to carry the user's own files over (``--out`` may be a folder such as ``/tmp``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

MANIFEST = ".lite3r-manifest.json"
STAGE_PREFIX = ".lite3r-stage-"
_PLAN = ".lite3r-commit.json"
_GRAPH_SUFFIXES = (".onnx", ".engine", ".pt2")  # files that name others: committed after them
_RECORDS = ("record.json",)  # describes every other file: committed last
_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])}


class OutputError(ValueError):
    """The output location cannot be used."""


def check_writable_dir(out: str | os.PathLike) -> Path:
    """Check that ``out`` is (or can be created as) a writable folder; fail before any work, create nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot create output folder {out}: a file of that name exists")
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(f"cannot create output folder {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == out:
            raise OutputError(f"output folder {out} is not writable")
        raise OutputError(f"cannot create output folder {out}: {existing} is not writable")
    return out


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, writer: str) -> Iterator[Path]:
    """Yield a staging folder inside ``out``; when the block succeeds, commit its files as ``writer``'s set.

    On any exception (Ctrl-C included) the staging folder is removed and ``out`` keeps exactly what it had
    before; a destination created here is removed again while still empty.
    """
    out = Path(out)
    created = _make_dirs(out)
    stage = None
    try:
        clean_stale_stages(out)
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=out))
        yield stage
        _commit(out, stage, writer)
        created = []
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty


def clean_stale_stages(out: str | os.PathLike) -> list[Path]:
    """Finish or delete the staging folders in ``out`` left by processes that are gone; returns those handled."""
    handled = []
    for stage in Path(out).glob(f"{STAGE_PREFIX}*"):
        if not stage.is_dir() or _owner_alive(stage.name):
            continue
        plan = stage / _PLAN
        if plan.is_file():
            with contextlib.suppress(ValueError, OSError):
                _apply(Path(out), stage, json.loads(plan.read_text()))
        shutil.rmtree(stage, ignore_errors=True)
        handled.append(stage)
    return handled


def read_manifest(out: str | os.PathLike) -> dict[str, list[str]]:
    """Writer -> the file names it committed to ``out`` (empty when there is no readable manifest)."""
    try:
        writers = json.loads((Path(out) / MANIFEST).read_text()).get("writers", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {w: [n for n in names if isinstance(n, str)] for w, names in writers.items() if isinstance(names, list)}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content (mode as ``open()`` gives)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
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


def default_file_mode() -> int:
    """``0o666`` less the process umask: what ``open(path, "w")`` creates."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _make_dirs(out: Path) -> list[Path]:
    """Create ``out`` and missing parents; returns those created, innermost first."""
    missing = [p for p in (out, *out.absolute().parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder")
    return missing


def _commit(out: Path, stage: Path, writer: str) -> None:
    nested = out.name.startswith(STAGE_PREFIX)  # a stage inside another stage: the outer commit keeps the books
    names = sorted(p.name for p in stage.iterdir() if p.name != _PLAN)
    writers = {} if nested else read_manifest(out)
    stale = [] if nested else sorted(set(writers.get(writer, [])) - set(names))
    writers = {w: [n for n in files if n not in names] for w, files in writers.items() if w != writer}
    plan = {
        "move": sorted(names, key=_commit_rank),
        "remove": stale,
        "manifest": None if nested else {"format": "lite3r.manifest", "writers": writers | {writer: names}},
    }
    atomic_write_bytes(stage / _PLAN, json.dumps(plan).encode())
    with _signals_deferred():
        _apply(out, stage, plan)


def _apply(out: Path, stage: Path, plan: dict) -> None:
    """Carry out a commit plan; safe to repeat after an interruption (moved files are skipped)."""
    mode = default_file_mode()
    for name in plan["move"]:
        source = stage / name
        if source.exists():
            if source.is_file():
                os.chmod(source, mode)
            os.replace(source, out / name)
    for name in plan["remove"]:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (out / name).unlink()
    if plan.get("manifest") is not None:
        atomic_write_bytes(out / MANIFEST, (json.dumps(plan["manifest"], indent=1) + "\n").encode())
    with contextlib.suppress(FileNotFoundError):
        (stage / _PLAN).unlink()


def _commit_rank(name: str) -> tuple[int, str]:
    return (2 if name in _RECORDS else 1 if name.endswith(_GRAPH_SUFFIXES) else 0), name


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back interrupting signals until the block ends, then deliver them; a no-op off the main thread.

    The handlers are swapped for ones that only record the signal. Blocking the signals in the main thread
    (``pthread_sigmask``) is not enough: once other threads exist (torch's, in every lite3r command) the OS
    hands the signal to one of them and Python still raises it in the main thread, mid-commit. A handler that
    Python did not install (None) or an ignored signal is left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for sig in _DEFERRED_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None and handler is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):  # each signal once, in arrival order
            signal.raise_signal(signum)


def _owner_alive(stage_name: str) -> bool:
    """Whether the process that made a staging folder (its pid follows the prefix) still runs."""
    pid = stage_name.removeprefix(STAGE_PREFIX).split("-", 1)[0]
    if not pid.isdigit():
        return False  # a folder of an older lite3r (no pid in its name)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True  # this process's own stages are live too (one may be in use further up the stack)
