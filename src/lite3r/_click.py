"""Click helpers shared by every command module: expected failures become one clear line."""

from __future__ import annotations

import functools
import os

import click

from lite3r.deploy._trt import DeployError


def one_line_errors(fn):
    """Turn expected failures (bad input, unreadable files, missing TensorRT) into one line and exit code 1.

    Set LITE3R_DEBUG=1 to see the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, NotImplementedError, DeployError) as e:
            if os.environ.get("LITE3R_DEBUG"):
                raise
            raise click.ClickException(str(e)) from None

    return wrapper


def quiet_third_party() -> None:
    """Silence notices from libraries we drive that say nothing about the user's run (optional packages we do
    not use, deprecations inside torch's exporter); our own progress and errors are unaffected."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Cannot find transformers package")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
