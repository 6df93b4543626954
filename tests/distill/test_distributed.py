"""`lite3r distill` under torchrun (2 CPU processes, gloo) against the same command in one process: the commands
of issue 15, a kill and a resume on another number of processes. Each run starts fresh interpreters, so the
module shares the one-process reference run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lite3r
from lite3r.distill.distributed import SceneSampler, World

COMMAND = ["distill", "--model", "vggt-tiny", "--data", "synthetic", "--scenes", "8", "--views", "2", "--steps", "4",
           "--batch-size", "2", "--no-fp8", "--seed", "0"]  # fmt: skip


def _lite3r_script() -> str:
    """The installed console script (what `command -v lite3r` finds in a plain environment)."""
    script = Path(sysconfig.get_path("scripts")) / "lite3r"
    assert script.is_file(), f"lite3r is not installed as a console script ({script})"
    return str(script)


def _env() -> dict[str, str]:
    src = str(Path(lite3r.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _one_process(out: Path, *extra: str) -> list[str]:
    return [_lite3r_script(), *COMMAND, *extra, "--out", str(out)]


def _two_processes(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *_one_process(out, *extra)]  # fmt: skip


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_training(out: Path, reference: Path) -> None:
    """Same proj_lin to float tolerance, and the same per-step loss and gradient norm: AdamW hides a wrongly
    scaled gradient from the weights, the logged norm does not."""
    got, expected = load_file(out / "student.safetensors"), load_file(reference / "student.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    got_log, expected_log = _log(out), _log(reference)
    assert [r["step"] for r in got_log] == [r["step"] for r in expected_log] == [0, 1, 2, 3]
    for key in ("loss", "attention", "depth", "points", "pose", "grad_norm", "lr"):
        assert [r[key] for r in got_log] == pytest.approx([r[key] for r in expected_log], rel=1e-5), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_process")
    _run(_one_process(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_what_one_process_trains(one_process, tmp_path, parallel):
    _run(_two_processes(tmp_path, "--parallel", parallel))
    _assert_same_training(tmp_path, one_process)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_in_one_process(one_process, tmp_path):
    run = subprocess.Popen(_two_processes(tmp_path, "--checkpoint-every", "1"), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "checkpoint.pt").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        worker = int(Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()[0])
        os.kill(worker, signal.SIGKILL)  # a crash: no cleanup; torchrun stops the other process
        assert run.wait(timeout=120) != 0
    finally:
        if run.poll() is None:
            run.kill()
    interrupted_at = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= interrupted_at < 4
    _run(_one_process(tmp_path))
    _assert_same_training(tmp_path, one_process)  # the log too: each step once, lines past the checkpoint dropped


def test_the_sampler_splits_each_step_without_depending_on_the_number_of_processes():
    """5 scenes, 3 steps of 4: the stream crosses two epoch boundaries; 1, 2 and 4 processes (resumed at any
    step) together take exactly the one-process stream, each a contiguous part of every step."""
    alone = list(SceneSampler(5, 4, 3, seed=7))
    assert sorted(alone[:5]) == list(range(5)) and alone[:5] != list(range(5))  # epoch 0: a permutation
    assert alone[:5] != alone[5:10]  # epoch 1: another one
    for size in (2, 4):
        for start in (0, 1):
            parts = [list(SceneSampler(5, 4, 3, start=start, world=World(rank, size), seed=7)) for rank in range(size)]
            per = 4 // size
            merged = [i for step in range(3 - start) for part in parts for i in part[step * per : (step + 1) * per]]
            assert merged == alone[4 * start :]
            assert all(len(part) == len(SceneSampler(5, 4, 3, start=start, world=World(0, size))) for part in parts)
    assert list(SceneSampler(5, 2, 3, shuffle=False)) == [0, 1, 2, 3, 4, 0]


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_one_line_before_any_model_is_built(tmp_path):
    command = [*_two_processes(tmp_path), "--batch-size", "3"]  # the last --batch-size wins
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    expected = "Error: batch_size must be a positive multiple of the number of processes (2), got 3"
    assert done.stdout.count(expected) + done.stderr.count(expected) == 2  # one line from each process
    assert "No --checkpoint" not in done.stderr and not (tmp_path / "log.jsonl").exists()
