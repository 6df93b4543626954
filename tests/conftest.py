"""Suite-wide rules: hardware markers skip with a reason, a run that collects no test fails, every test starts
from fixed seeds (torch, numpy, random), so a test that draws without its own generator still sees the same
numbers on every run, and Ctrl-C (SIGINT) reaches the child processes the interrupt tests start."""

from __future__ import annotations

import importlib.util
import signal

import pytest


def pytest_configure(config):
    # A suite started in the background without job control (`cmd &` in a script, nohup) inherits SIGINT ignored,
    # and so would every child process, which then never sees the Ctrl-C the interrupt tests send (they exited 0,
    # 2026-11-30). A terminal's Ctrl-C is never ignored: give the children the default disposition back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    needs = {
        "gpu": (_has_cuda(), "needs a CUDA GPU; none on this machine"),
        "tensorrt": (
            importlib.util.find_spec("tensorrt") is not None,
            "needs datacenter TensorRT (`import tensorrt`), which is not installed here",
        ),
    }
    for item in items:
        for marker, (available, reason) in needs.items():
            if marker in item.keywords and not available:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionfinish(session, exitstatus):
    # pytest exits 5 when nothing was collected; a CI run that tested nothing must fail loudly instead.
    if session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def fixed_seeds():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Toy-sized ops are overhead-bound: on a busy 2-core machine extra threads only add waiting (~10x)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
