"""The two TensorRT flavours behind one interface: which module to import and what each one supports.

Datacenter TensorRT (``tensorrt``) builds on a machine with an NVIDIA GPU, has Python plugins
(``tensorrt.plugin``) and a timing cache. TensorRT-RTX (``tensorrt_rtx_bindings``) compiles engines without a
GPU and specialises them when they are loaded; it has no Python plugins, and its timing cache is a no-op.
The Python API is otherwise the same, so every other line of the build is shared.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable


class DeployError(Exception):
    """Base class of the errors ``lite3r.deploy`` raises on purpose (each carries a one-line message)."""


class TensorRTNotInstalledError(DeployError, ImportError):
    """The TensorRT flavour chosen for the build cannot be imported here."""


@dataclass(frozen=True)
class Flavour:
    target: str
    module: str
    label: str
    install_hint: str
    python_plugins: bool
    timing_cache: bool
    min_version: tuple[int, ...] = ()  # older releases import but lack what lite3r uses


FLAVOURS = {
    "tensorrt": Flavour(
        target="tensorrt",
        module="tensorrt",
        label="datacenter TensorRT",
        install_hint="pip install 'lite3r[tensorrt]' on a machine with an NVIDIA GPU",
        python_plugins=True,
        timing_cache=True,
        min_version=(10, 9),  # tensorrt.plugin.aot_impl (the SLA plugin's ahead-of-time kernel)
    ),
    "tensorrt-rtx": Flavour(
        target="tensorrt-rtx",
        module="tensorrt_rtx_bindings",
        label="TensorRT-RTX",
        install_hint="pip install 'lite3r[tensorrt-rtx]'",
        python_plugins=False,
        timing_cache=False,
    ),
}


def flavour(target: str) -> Flavour:
    if target not in FLAVOURS:
        raise ValueError(f"unknown TensorRT target {target!r}; choose one of {sorted(FLAVOURS)}")
    return FLAVOURS[target]


def import_tensorrt(target: str) -> tuple[Flavour, ModuleType]:
    """The flavour and its imported module, or one clear error naming the install command."""
    chosen = flavour(target)
    try:
        module = importlib.import_module(chosen.module)
    except ImportError as e:
        raise TensorRTNotInstalledError(
            f"{chosen.label} is not installed ({e.msg}): {chosen.install_hint}"
        ) from None
    version = tuple(int(p) for p in re.findall(r"\d+", str(getattr(module, "__version__", "0")))[:3])
    if version < chosen.min_version:
        wanted = ".".join(map(str, chosen.min_version))
        raise TensorRTNotInstalledError(
            f"{chosen.label} {module.__version__} is too old: lite3r needs >= {wanted} ({chosen.install_hint})"
        )
    return chosen, module


_SEVERITY_TAGS = ("E", "E", "W", "I", "V")  # internal error, error, warning, info, verbose


class LogCapture:
    """Collects TensorRT log lines of one build.

    TensorRT keeps the first logger it is given for process-wide messages, so one forwarding logger per
    module is created once and points at the capture of the build in progress.
    """

    _loggers: dict[str, Any] = {}

    def __init__(self, trt: ModuleType, verbose: bool = False) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._max_level = 4 if verbose else 3
        self.logger = self._forwarding_logger(trt)
        self.logger.sink = self._record

    def _record(self, severity: Any, message: str) -> None:
        level = int(severity)
        if level <= self._max_level:
            self.lines.append(f"[{_SEVERITY_TAGS[level]}] {message}")
        if level <= 1:
            self.errors.append(message)

    @classmethod
    def _forwarding_logger(cls, trt: ModuleType) -> Any:
        if trt.__name__ not in cls._loggers:

            class _Forwarding(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.sink: Callable[[Any, str], None] = lambda severity, message: None

                def log(self, severity: Any, message: str) -> None:
                    self.sink(severity, message)

            cls._loggers[trt.__name__] = _Forwarding()
        return cls._loggers[trt.__name__]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
