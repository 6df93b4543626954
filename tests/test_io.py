"""Output folders (``lite3r._io``): a writer's earlier files are replaced as a set, the user's are kept, graphs come
after their data, modes are the umask's, and an interrupted run (signals in a real subprocess) leaves the folder
as it was, or complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lite3r._io import MANIFEST, STAGE_PREFIX, read_manifest, staged_output

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)


def _visible(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_a_writer_replaces_its_own_earlier_files_and_keeps_everything_else(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out, notes__txt="mine")
    with staged_output(out, writer="lite3r-export") as stage:
        _write(stage, model__onnx="v1", model__engine="v1")
    with staged_output(out, writer="parity") as stage:
        _write(stage, parity__md="p1")
    with staged_output(out, writer="lite3r-export") as stage:  # this run builds no engine
        _write(stage, model__onnx="v2")
    assert _visible(out) == {"model.onnx": "v2", "notes.txt": "mine", "parity.md": "p1"}  # old engine gone
    assert read_manifest(out) == {"parity": ["parity.md"], "lite3r-export": ["model.onnx"]}


def test_graph_is_committed_after_its_data_and_modes_follow_the_umask(tmp_path, monkeypatch):
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    previous = os.umask(0o022)
    try:
        with staged_output(tmp_path, writer="export:model.onnx") as stage:
            _write(stage, model__onnx="graph", model__onnx__data="weights", record__json="{}")
            os.chmod(stage / "model.onnx.data", 0o600)  # as mkstemp-based writers leave it
    finally:
        os.umask(previous)
    order = [n for n in moved if not n.startswith(".")]
    assert order == ["model.onnx.data", "model.onnx", "record.json"]
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "model.onnx": 0o644, "model.onnx.data": 0o644, "record.json": 0o644, MANIFEST: 0o644,
    }  # fmt: skip


def test_a_failed_stage_leaves_the_folder_as_it_was_and_no_empty_folder(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), staged_output(out, writer="w") as stage:
        _write(stage, a="1")
        raise RuntimeError("late failure")
    assert not (tmp_path / "new").exists()  # created for the stage, removed with it
    (tmp_path / "kept").mkdir()
    _write(tmp_path / "kept", a="old")
    with pytest.raises(RuntimeError), staged_output(tmp_path / "kept", writer="w") as stage:
        _write(stage, a="new", b="new")
        raise RuntimeError("late failure")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a"]
    assert (tmp_path / "kept" / "a").read_text() == "old"


_CHILD = textwrap.dedent(
    """
    import os, sys, threading, time
    sys.path.insert(0, {src!r})
    from lite3r import _io
    from lite3r._click import _terminate_like_interrupt
    out, where, threads = sys.argv[1], sys.argv[2], sys.argv[3] == "threads"
    if threads:  # as in the CLI once torch runs: the OS may hand a process's signal to any thread
        threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
    real_apply = _io._apply
    def slow_apply(out_, stage, plan):  # a commit long enough to be interrupted in its middle
        for name in plan["move"]:
            if where == "commit":
                print("COMMITTING", flush=True)
                time.sleep(0.5)
            src = stage / name
            if src.exists():
                os.replace(src, out_ / name)
        real_apply(out_, stage, plan)
    _io._apply = slow_apply
    with _terminate_like_interrupt():
        with _io.staged_output(out, writer="w") as stage:
            for name in ("model.onnx.data", "model.onnx", "record.json"):
                (stage / name).write_text("new")
            if where == "stage":
                print("STAGED", flush=True)
                time.sleep(60)
    print("DONE", flush=True)
    """
)


def _start(tmp_path: Path, where: str, threads: bool = False) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name in ("model.onnx.data", "model.onnx", "record.json", "mine.txt"):
        (out / name).write_text("old")
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(src=SRC))
    child = subprocess.Popen([sys.executable, str(script), str(out), where, "threads" if threads else "main"],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    expected = {"stage": "STAGED", "commit": "COMMITTING"}[where]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.stdout.readline().strip() == expected:
            return child, out
    child.kill()
    raise AssertionError("the child never reached the point to interrupt")


OLD = {"model.onnx": "old", "model.onnx.data": "old", "mine.txt": "old", "record.json": "old"}
NEW = {"model.onnx": "new", "model.onnx.data": "new", "mine.txt": "old", "record.json": "new"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_staging_leaves_the_folder_as_it_was(tmp_path, sig):
    child, out = _start(tmp_path, "stage")
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0
    assert _visible(out) == OLD
    assert not list(out.glob(f"{STAGE_PREFIX}*"))


@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_the_commit_is_held_until_the_commit_is_complete(tmp_path, sig, threads):
    """With other threads alive (torch's, in the CLI) the OS may deliver the signal to one of them: the commit
    must still finish before the interrupt is raised."""
    child, out = _start(tmp_path, "commit", threads)
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    raised = "KeyboardInterrupt" if sig == signal.SIGINT else "Stopped: SIGTERM"  # lite3r._click.Stopped
    assert child.returncode != 0 and raised in err, err  # delivered, after the commit
    assert _visible(out) == NEW
    assert not list(out.glob(f"{STAGE_PREFIX}*"))


@pytest.mark.parametrize("where, expected", [("stage", OLD), ("commit", NEW)])
def test_after_sigkill_the_next_run_cleans_up_or_finishes_the_commit(tmp_path, where, expected):
    child, out = _start(tmp_path, where)
    child.kill()
    child.communicate(timeout=60)
    [stale] = list(out.glob(f"{STAGE_PREFIX}*"))  # what SIGKILL leaves behind
    with staged_output(out, writer="other") as stage:  # any later write into the folder
        (stage / "report.md").write_text("r")
    assert not stale.exists()
    assert _visible(out) == expected | {"report.md": "r"}
    if where == "commit":  # the killed run's commit was planned: it is finished, manifest included
        writers = json.loads((out / MANIFEST).read_text())["writers"]
        assert writers["w"] == ["model.onnx", "model.onnx.data", "record.json"]
