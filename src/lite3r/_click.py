"""Click helpers shared by every command module: expected failures become one clear line."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading

import click

from lite3r.deploy.tensorrt.flavour import DeployError


def one_line_errors(fn):
    """Turn expected failures (bad input, unreadable files, missing TensorRT) into one line and exit code 1.

    Set LITE3R_DEBUG=1 to see the traceback instead. SIGTERM and SIGHUP end the command like Ctrl-C does (staging
    folders are removed, the output folder stays as it was); Python's default would kill it on the spot.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _terminate_like_interrupt():
                return fn(*args, **kwargs)
        except Stopped as e:
            with contextlib.suppress(BrokenPipeError):  # the signal may have ended the reader of stderr too
                print(f"\nstopped by {signal.Signals(e.signum).name}", file=sys.stderr)
            raise SystemExit(128 + e.signum) from None
        except (ValueError, OSError, NotImplementedError, DeployError) as e:
            if os.environ.get("LITE3R_DEBUG"):
                raise
            raise click.ClickException(str(e)) from None

    return wrapper


class _terminate_like_interrupt:
    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self.previous[sig] = signal.signal(sig, _exit_on_signal)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised where the program is, like Ctrl-C: code that keeps partial results on an
    interrupt (``lite3r bench``) keeps them for these too; the command then exits with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _exit_on_signal(signum, frame):
    raise Stopped(signum)


def quiet_third_party() -> None:
    """Silence notices from libraries we drive that say nothing about the user's run (optional packages we do
    not use, deprecations inside torch's exporter); our own progress and errors are unaffected."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Cannot find transformers package")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
