"""Build a TensorRT engine from lite3r's ONNX export, with datacenter TensorRT or TensorRT-RTX.

One code path serves both flavours (``lite3r.deploy.tensorrt.flavour`` holds what differs). The network is strongly
typed, so precision comes from the graph itself (FP8 from its QuantizeLinear/DequantizeLinear pairs) and no
builder precision flag is set. The optimisation profile spans a range of frame counts for the model input
``images [1, S, 3, H, W]``. The report says, for every ``lite3r`` custom node, whether TensorRT runs it as a
plugin or as its inlined ONNX function body. docs/deploy.md explains the choices.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from lite3r._io import atomic_write_bytes, check_writable_dir, staged_output
from lite3r.deploy.frames import FrameRange, check_frames, parse_frames
from lite3r.deploy.tensorrt.flavour import DeployError, Flavour, LogCapture, flavour, import_tensorrt
from lite3r.deploy.tensorrt.nodes import NodeResolution, custom_nodes, network_layers, resolve
from lite3r.exporter import SLA_CORE_KEY

DEFAULT_FRAMES = (1, 8, 32)
_MAX_PARSER_ERRORS = 3


class OnnxParseError(DeployError, ValueError):
    """TensorRT could not parse the ONNX model."""


class EngineBuildError(DeployError, RuntimeError):
    """TensorRT parsed the model but could not build an engine from it."""


@dataclass
class BuildReport:
    """What was built and how: paths, TensorRT flavour, profile, and how each custom node resolved."""

    engine_path: Path
    log_path: Path
    target: str
    tensorrt_version: str
    frames: FrameRange
    image_size: tuple[int, int] | None
    custom_nodes: list[NodeResolution]
    engine_bytes: int
    build_seconds: float
    timing_cache: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sla_resolution(self) -> str:
        """``plugin`` (a plugin runs every custom node, or the core nested in it), ``function`` (function bodies
        only), ``missing`` (no layer comes from any of them), ``mixed``, or ``none`` without custom nodes."""
        kinds = {{True: "plugin", False: "function", None: "missing"}[r.on_plugin] for r in self.custom_nodes}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(engine_path=str(self.engine_path), log_path=str(self.log_path), frames=list(self.frames))
        data["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        data["sla_resolution"] = self.sla_resolution
        return data

    def summary(self) -> str:
        lines = [
            f"{self.engine_path} ({self.engine_bytes / 2**20:.1f} MiB) built with {self.target} "
            f"{self.tensorrt_version} in {self.build_seconds:.1f} s",
            f"frames {self.frames.min}..{self.frames.max} (tuned for {self.frames.opt})"
            + (f", images {self.image_size[0]}x{self.image_size[1]}" if self.image_size else ""),
            *([f"custom nodes on a plugin: {sum(bool(r.on_plugin) for r in self.custom_nodes)} of "
               f"{len(self.custom_nodes)}"] if self.custom_nodes else []),
            *(f"  {r.describe()}" for r in self.custom_nodes),
            *self.notes,
        ]
        return "\n".join(lines)


def _load_graph(onnx_path: Path) -> onnx.ModelProto:
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist")
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError
        raise OnnxParseError(f"{onnx_path} is not an ONNX model: {e}") from None


def _check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if len(image_size) != 2 or any(not isinstance(s, int) or s < 1 for s in image_size):
        raise ValueError(f"image_size must be two positive integers (H, W); got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _check_workspace(workspace: int | None) -> None:
    if workspace is not None and (not isinstance(workspace, int) or workspace < 1):
        raise ValueError(f"workspace must be a positive number of bytes; got {workspace!r}")


def _images_profile(
    name: str, shape: Sequence[int], frames: FrameRange | None, image_size: tuple[int, int] | None
) -> tuple[FrameRange, tuple[int, int]]:
    """Frame range and image size for the input ``images [1, S, 3, H, W]``, checked against its exported shape."""
    if len(shape) != 5 or shape[0] not in (1, -1) or shape[2] == -1:
        raise ValueError(
            f"input {name!r} has shape {tuple(shape)}; lite3r engines take images [1, S, 3, H, W] "
            "with a dynamic frame axis S"
        )
    exported = shape[1]
    if frames is None:
        frames = FrameRange(*DEFAULT_FRAMES) if exported == -1 else FrameRange(exported, exported, exported)
    elif exported != -1 and frames != (exported,) * 3:
        raise ValueError(
            f"the model was exported for exactly {exported} frames; pass frames={exported} "
            "or re-export with a dynamic frame axis"
        )
    height, width = shape[3], shape[4]
    if image_size is None:
        if -1 in (height, width):
            raise ValueError(f"input {name!r} has a dynamic image size; pass image_size=(H, W)")
        image_size = (height, width)
    if any(exported_dim not in (-1, wanted) for exported_dim, wanted in zip((height, width), image_size)):
        raise ValueError(
            f"the model was exported for {height}x{width} images; image_size "
            f"{image_size[0]}x{image_size[1]} does not match"
        )
    return frames, image_size


def _parser_errors(parser: Any, label: str, onnx_path: Path) -> OnnxParseError:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    described = []
    for error in errors[:_MAX_PARSER_ERRORS]:
        where = f"node {error.node_name()!r} ({error.node_operator()}): " if error.node_name() else ""
        described.append(f"{where}{error.desc()}")
    more = f" (+{len(errors) - _MAX_PARSER_ERRORS} more)" if len(errors) > _MAX_PARSER_ERRORS else ""
    return OnnxParseError(f"{label} could not parse {onnx_path.name}: {'; '.join(described)}{more}")


def _register_plugins(chosen: Flavour, notes: list[str]) -> None:
    if not chosen.python_plugins:
        notes.append(f"{chosen.label} has no Python plugins: custom nodes run as their ONNX function bodies")
        return
    from lite3r.plugins.tensorrt_sla import register_sla_plugin

    try:
        notes.append(f"registered TensorRT plugin {register_sla_plugin()}")
    except ImportError as e:
        notes.append(f"SLA plugin not registered ({e}); custom nodes run as their ONNX function bodies")


def _network_flags(trt: Any, chosen: Flavour) -> int:
    names = ["STRONGLY_TYPED"] + (["PREFER_AOT_PYTHON_PLUGINS"] if chosen.python_plugins else [])
    flags = (getattr(trt.NetworkDefinitionCreationFlag, n, None) for n in names)
    return sum(1 << int(f) for f in flags if f is not None)


def _frame_range(frames: FrameRange | Sequence[int] | str | None) -> FrameRange | None:
    if frames is None:
        return None
    return parse_frames(frames) if isinstance(frames, str) else check_frames(tuple(frames))


def _add_profile(
    builder: Any, config: Any, network: Any, frames: FrameRange | None, image_size: tuple[int, int] | None
) -> tuple[FrameRange, tuple[int, int] | None]:
    """Optimisation profile over frame counts for the images input; returns the frame range and image size."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if len(shape) == 5 or -1 in shape:
            frames, image_size = _images_profile(tensor.name, shape, frames, image_size)
            if -1 in shape:
                profile.set_shape(tensor.name, *((1, count, shape[2], *image_size) for count in frames))
                dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    return frames or FrameRange(*DEFAULT_FRAMES), image_size


def _set_tf32(trt: Any, config: Any, allowed: bool, notes: list[str]) -> None:
    """TensorRT enables TF32 by default; lite3r clears it unless asked (a flavour without the flag has none)."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        return
    if allowed:
        config.set_flag(flag)
        notes.append("TF32 allowed for float32 layers")
    else:
        config.clear_flag(flag)


def _use_timing_cache(config: Any, chosen: Flavour, cache_path: Path | None, notes: list[str]) -> Path | None:
    """Load the timing cache into ``config``; returns the path to save it to after the build, if any."""
    if cache_path is None:
        return None
    if not chosen.timing_cache:
        notes.append(f"{chosen.label} has no timing cache; {cache_path} was not used")
        return None
    cached = cache_path.read_bytes() if cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), False)
    return cache_path


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    target: str = "tensorrt",
    frames: FrameRange | Sequence[int] | str | None = None,
    image_size: Sequence[int] | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace: int | None = None,
    verbose: bool = False,
    tf32: bool = False,
) -> BuildReport:
    """Build ``out_path`` (the engine) and ``<out_path stem>.build.log`` from ``onnx_path``.

    ``target``: ``"tensorrt"`` (datacenter, needs a GPU) or ``"tensorrt-rtx"``.
    ``frames``: ``(min, opt, max)`` or ``"2:8:32"``; by default ``DEFAULT_FRAMES``, or the exported count when
    the model's frame axis is fixed. ``image_size``: ``(H, W)``, needed only when the model's is dynamic.
    ``timing_cache``: a file read before and written after the build (datacenter TensorRT only).
    ``workspace``: the builder's workspace limit in bytes. ``verbose``: keep TensorRT's verbose messages in
    the log. ``tf32``: allow TF32 for float32 layers (off: the SLA block scores feeding TopK are float32, and
    TF32's 10-bit mantissa can rank blocks differently from the student). Engine and log appear together, and
    only when the build succeeds.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    flavour(target)  # an unknown target fails before any work
    frame_range = _frame_range(frames)
    wanted_size = _check_image_size(image_size)
    _check_workspace(workspace)
    model = _load_graph(onnx_path)
    check_writable_dir(out_path.parent)

    chosen, trt = import_tensorrt(target)
    notes = [f"exported SLA cores for TensorRT: {p.value}" for p in model.metadata_props if p.key == SLA_CORE_KEY]
    _register_plugins(chosen, notes)
    capture = LogCapture(trt, verbose)
    builder = trt.Builder(capture.logger)
    network = builder.create_network(_network_flags(trt, chosen))
    parser = trt.OnnxParser(network, capture.logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise _parser_errors(parser, chosen.label, onnx_path)
    resolutions = resolve(custom_nodes(model), network_layers(network))

    config = builder.create_builder_config()
    frame_range, image = _add_profile(builder, config, network, frame_range, wanted_size)
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    _set_tf32(trt, config, tf32, notes)
    cache_path = _use_timing_cache(config, chosen, None if timing_cache is None else Path(timing_cache), notes)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        reasons = "; ".join(capture.errors[-_MAX_PARSER_ERRORS:]) or "no error was logged"
        raise EngineBuildError(f"{chosen.label} could not build an engine from {onnx_path.name}: {reasons}")
    engine = bytes(serialized)

    log_path = out_path.with_suffix(".build.log")
    with staged_output(out_path.parent, writer=f"build:{out_path.name}") as stage:
        (stage / out_path.name).write_bytes(engine)
        (stage / log_path.name).write_text(capture.text())
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return BuildReport(
        engine_path=out_path,
        log_path=log_path,
        target=chosen.target,
        tensorrt_version=trt.__version__,
        frames=frame_range,
        image_size=image,
        custom_nodes=resolutions,
        engine_bytes=len(engine),
        build_seconds=seconds,
        timing_cache=cache_path,
        notes=notes,
    )


class EngineFromOnnx:
    """Lazy loader in Polygraphy's style: ``EngineFromOnnx(onnx, out, **options)()`` builds once and returns
    the ``BuildReport``; later calls return the same report without rebuilding."""

    def __init__(self, onnx_path: str | os.PathLike, out_path: str | os.PathLike, **options: Any) -> None:
        self.onnx_path, self.out_path, self.options = onnx_path, out_path, options
        self._report: BuildReport | None = None

    def __call__(self) -> BuildReport:
        if self._report is None:
            self._report = build_engine(self.onnx_path, self.out_path, **self.options)
        return self._report
