"""``model.pt2``: the prepared student as an AOTInductor package (``export_pt2``) and its loader (``load_pt2``).

The package is what a PyTorch shop ships to servers: compiled kernels, weights and a C++ runner in one zip,
loadable from Python (``torch._inductor.aoti_load_package``) or C++ (``torch::inductor::AOTIModelPackageLoader``)
without lite3r or any Python model code. It holds the model ``TorchRuntime`` runs (``prepare_model``: 16-bit
weights, FP8 GEMMs from a quant state, without the modules the forward never runs) exported with a dynamic frame
axis. The SLA op is a
``torch.library.triton_op``, so Inductor compiles its Triton kernels (CUDA) or the reference's torch ops (CPU)
into the package instead of calling back into Python. docs/deploy.md has the decisions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

from lite3r._io import check_writable_dir, staged_output
from lite3r.deploy.frames import FrameRange, check_frames, parse_frames
from lite3r.deploy.torch.fp8 import FP8Linear
from lite3r.deploy.torch.prepare import prepare_model, resolve_dtype
from lite3r.deploy.torch.runtime import _INDUCTOR_OPTIONS
from lite3r.models import family_of
from lite3r.sla.module import runtime_settings_error

INPUT_NAME = "images"
FRAMES = "frames"  # name of the dynamic frame dimension
FORMAT = "lite3r.pt2/1"
# Package metadata (``aot_inductor.metadata``, strings only): enough for a loader to check its input and for
# parity to know the package's precision, without lite3r's model code.
_META_FORMAT, _META_FRAMES, _META_SIZE = "lite3r.format", "lite3r.frames", "lite3r.image_size"
_META_DTYPE, _META_DEVICE, _META_OUTPUTS = "lite3r.dtype", "lite3r.device", "lite3r.outputs"
_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the exporter's names


class Pt2Error(ValueError):
    """Bad options for, or a failed, ``.pt2`` export; or an input the package cannot take."""


class Pt2DeviceError(Pt2Error):
    """The package was compiled for CUDA and this machine has no CUDA GPU: it cannot run here (parity lists it as
    not run, not as failed)."""


@dataclass(frozen=True)
class Pt2Report:
    """What ``export_pt2`` wrote."""

    path: Path
    frames: FrameRange
    image_size: tuple[int, int]
    dtype: str
    device: str
    sla_layers: int
    fp8_layers: int
    file_bytes: int
    export_s: float  # torch.export
    compile_s: float  # AOTInductor compile and packaging
    check_s: float | None  # loading the package and running it at the smallest and largest frame count

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        f = self.frames
        check = "not checked" if self.check_s is None else f"load + run at S={f.min},{f.max} {self.check_s:.1f} s"
        return (
            f"{self.path}: {self.file_bytes / 2**20:.1f} MiB AOTInductor package for {self.device}, {self.dtype} "
            f"weights, {self.fp8_layers} FP8 linears, {self.sla_layers} SLA layers, images [1, S, 3, "
            f"{self.image_size[0]}, {self.image_size[1]}] with S in {f.min}..{f.max} (traced at {f.opt}); "
            f"export {self.export_s:.1f} s, compile {self.compile_s:.1f} s, {check}"
        )


def export_pt2(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    frames: str | FrameRange | tuple[int, int, int] = "2:8:32",
    image_size: int | tuple[int, int] | None = None,
    dtype: str | torch.dtype = "bfloat16",
    quant_state: dict[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device = "cuda",
    check: bool = True,
) -> Pt2Report:
    """Export ``model`` (a float32 lite3r model, dense or SLA; prepared **in place**, as ``TorchRuntime`` does) to
    ``path`` as an AOTInductor package taking ``images [1, S, 3, H, W]`` float32 on ``device``.

    ``frames``: ``"min:opt:max"`` (or one count): S is dynamic over ``min..max``, traced at ``opt``.
    ``image_size``: H, W fixed in the package (default: the family's view size). ``dtype``: weights and activations
    (``bfloat16``, ``float16`` or ``float32``). ``quant_state``: ``quant_state.json`` (path or dict) whose linears
    become FP8 GEMMs. ``check``: load the package and run it at ``min`` and ``max`` frames before it is moved
    into place (turn off only where the caller runs it anyway). Nothing is written on failure.
    """
    started = time.perf_counter()
    path = Path(path)
    if reason := runtime_settings_error(model):
        raise Pt2Error(reason)
    frame_range = parse_frames(frames) if isinstance(frames, str) else check_frames(tuple(frames))
    size = _image_size(model, family_of(model).image_size if image_size is None else image_size)
    dtype = resolve_dtype(dtype)
    device = pt2_device(device)
    if isinstance(quant_state, (str, os.PathLike)):
        from lite3r.calibration.state import read_quant_state

        quant_state = read_quant_state(quant_state)
    check_writable_dir(path.parent)  # fail now, not after minutes of compiling

    model = prepare_model(model, device=device, dtype=dtype, quant_state=quant_state)
    program = _export(model, size, frame_range, device)
    exported = time.perf_counter()
    metadata = {
        _META_FORMAT: FORMAT,
        _META_FRAMES: f"{frame_range.min}:{frame_range.opt}:{frame_range.max}",
        _META_SIZE: f"{size[0]}x{size[1]}",
        _META_DTYPE: str(dtype).removeprefix("torch."),
        _META_DEVICE: device.type,
        _META_OUTPUTS: ",".join(program.call_spec.out_spec.context),  # the package's output order (C++ loader)
    }
    with staged_output(path.parent, writer=f"pt2:{path.name}") as stage:
        staged = stage / path.name
        with _size_oblivious():
            torch._inductor.aoti_compile_and_package(
                program,
                package_path=str(staged),
                inductor_configs={**_INDUCTOR_OPTIONS, "aot_inductor.metadata": metadata},
            )
        compiled = time.perf_counter()
        if check:
            _check_package(staged, device, size, frame_range)
        file_bytes = staged.stat().st_size
    from lite3r.sla.module import SparseLinearAttention

    return Pt2Report(
        path=path,
        frames=frame_range,
        image_size=size,
        dtype=metadata[_META_DTYPE],
        device=str(device),
        sla_layers=sum(isinstance(m, SparseLinearAttention) for m in model.modules()),
        fp8_layers=sum(isinstance(m, FP8Linear) for m in model.modules()),
        file_bytes=file_bytes,
        export_s=exported - started,
        compile_s=compiled - exported,
        check_s=time.perf_counter() - compiled if check else None,
    )


class Pt2Model:
    """``model(images)`` -> the official output dict, from a loaded ``.pt2`` (no lite3r model code involved).

    ``images``: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` floats in [0, 1], any device (moved to the package's).
    ``frames``, ``image_size``, ``dtype``, ``outputs``: what the package was exported for (its ``lite3r.*``
    metadata).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no .pt2 package at {self.path}")
        requested = None if device is None else torch.device(device)
        packaged = _package_metadata(self.path)
        wants_cuda = requested.type == "cuda" if requested is not None else (packaged or {}).get(_META_DEVICE) == "cuda"
        if wants_cuda and not torch.cuda.is_available():
            raise Pt2DeviceError(f"cannot load {self.path.name} on cuda: this machine has no CUDA GPU")
        index = {} if requested is None or requested.index is None else {"device_index": requested.index}
        self._model = torch._inductor.aoti_load_package(str(self.path), **index)
        metadata = _checked(self._model.get_metadata(), self.path)
        compiled_for = metadata[_META_DEVICE]
        if requested is not None and requested.type != compiled_for:
            raise Pt2Error(f"{self.path.name} was compiled for {compiled_for}; it cannot run on {requested}")
        self.device = requested or torch.device(compiled_for)
        self.frames = parse_frames(metadata[_META_FRAMES])
        height, width = (int(s) for s in metadata[_META_SIZE].split("x"))
        self.image_size = (height, width)
        self.dtype = metadata[_META_DTYPE]
        self.outputs = tuple(metadata[_META_OUTPUTS].split(","))

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the exporter's name for ``dtype`` (parity's precision)."""
        return _PRECISION_NAMES[self.dtype]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.ndim == 4:
            images = images.unsqueeze(0)
        shape = tuple(images.shape)
        if len(shape) != 5 or shape[0] != 1 or shape[2] != 3 or shape[3:] != self.image_size:
            height, width = self.image_size
            raise Pt2Error(f"{self.path.name} takes images [1, S, 3, {height}, {width}]; got {list(shape)}")
        if not self.frames.min <= shape[1] <= self.frames.max:
            raise Pt2Error(
                f"{shape[1]} frames is outside {self.path.name}'s range {self.frames.min}..{self.frames.max} "
                "(export it with a wider frames=MIN:OPT:MAX)"
            )
        return self._model(images.to(self.device, torch.float32).contiguous())


def load_pt2(path: str | os.PathLike, device: str | torch.device | None = None) -> Pt2Model:
    """Load a ``model.pt2`` written by :func:`export_pt2`; ``device`` defaults to the kind it was compiled for."""
    return Pt2Model(path, device)


def pt2_device(device: str | torch.device) -> torch.device:
    """The device a package is compiled for, checked: cuda (where a GPU is present) or cpu."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Pt2Error("device cuda: no CUDA GPU here (export for device='cpu', or run on a GPU machine)")
    if device.type not in ("cuda", "cpu"):
        raise Pt2Error(f"device must be cuda or cpu; got {device}")
    return device


def pt2_precision(path: str | os.PathLike) -> str:
    """The precision (``fp32``, ``bf16``, ``fp16``) a ``.pt2`` computes in, read from its metadata without loading
    its weights where this torch can, else by loading it."""
    metadata = _package_metadata(Path(path))
    return load_pt2(path).precision if metadata is None else _PRECISION_NAMES[metadata[_META_DTYPE]]


def _package_metadata(path: Path) -> dict[str, str] | None:
    """The package's metadata read without loading it (``load_metadata_from_package``); ``None`` where this torch
    cannot, or the file is missing (loading it then says why)."""
    read = getattr(torch._C._aoti.AOTIModelPackageLoader, "load_metadata_from_package", None)
    if read is None or not path.is_file():
        return None
    return _checked(read(str(path), "model"), path)


def _checked(metadata: dict[str, str], path: Path) -> dict[str, str]:
    if metadata.get(_META_FORMAT) != FORMAT:
        raise Pt2Error(f"{path} is not a lite3r .pt2 package (no {_META_FORMAT!r} metadata)")
    return metadata
def _image_size(model: nn.Module, image_size: int | tuple[int, int]) -> tuple[int, int]:
    patch = getattr(getattr(model, "config", None), "patch_size", 14)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 and s % patch == 0 for s in size):
        raise Pt2Error(f"image_size must be (H, W), positive multiples of the patch size {patch}; got {image_size!r}")
    return size  # type: ignore[return-value]


def _size_oblivious():
    """Guards such as "is S == 1" must not pin the frame count to the traced value (as in the ONNX export)."""
    from torch.fx.experimental import _config as fx_config

    return fx_config.patch(backed_size_oblivious=True)


def _export(model: nn.Module, size: tuple[int, int], frames: FrameRange, device: torch.device):
    traced = max(frames.opt, min(2, frames.max))  # a 1-frame trace would turn S == 1 checks into constants
    images = torch.rand(1, traced, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    dynamic = None
    if frames.min < frames.max:
        dynamic = {INPUT_NAME: {1: torch.export.Dim(FRAMES, min=frames.min, max=frames.max)}}
    with torch.no_grad(), _size_oblivious():
        try:
            program = torch.export.export(model, (images,), dynamic_shapes=dynamic, strict=False)
            # The SLA op's body (kernels or reference) in place of its node, as AOTInductor would put it, but
            # here, so that a shape assumption in it fails now with the frame range named.
            program = program.run_decompositions({}, decompose_custom_triton_ops=True)
        except (torch._dynamo.exc.UserError, ConstraintViolationError) as e:
            lines = [line.strip(" -") for line in str(e).strip().splitlines()]
            detail = next((line for line in lines if line.startswith(("Not all values", "solving"))), lines[0])
            raise Pt2Error(f"the frame axis cannot stay dynamic over {frames.min}..{frames.max}: {detail}") from None
    keys, expected = list(program.call_spec.out_spec.context), family_of(model).outputs
    if sorted(keys) != sorted(expected):
        raise Pt2Error(f"the model must return a dict with keys {expected}; it returns {keys}")
    return program


def _check_package(path: Path, device: torch.device, size: tuple[int, int], frames: FrameRange) -> None:
    """Load the package as a user would and run it at both ends of its frame range: an Inductor shape assumption
    that does not hold over the range (it asserts at run time) fails the export instead of the first user."""
    runner = load_pt2(path, device)
    for count in sorted({frames.min, frames.max}):
        images = torch.rand(1, count, 3, *size, generator=torch.Generator().manual_seed(count)).to(device)
        try:
            outputs = runner(images)
        except RuntimeError as e:
            raise Pt2Error(f"the compiled package fails at {count} frames: {str(e).splitlines()[0]}") from None
        bad = [name for name in runner.outputs if not torch.isfinite(outputs[name]).all()]
        if bad:
            raise Pt2Error(f"the compiled package gives non-finite {', '.join(bad)} at {count} frames")
