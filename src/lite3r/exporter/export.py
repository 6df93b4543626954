"""``export_onnx``: a lite3r model (VGGT or DA3; teacher or SLA student, optionally FP8) as one ONNX model with the
deployment contract: input ``images [1, S, 3, H, W]`` (S dynamic), the official outputs of the model's family (VGGT's
five, DA3's four), one ``lite3r::SparseLinearAttention`` node per SLA layer plus its model-local functions, FP8 Q/DQ
from ``quant_state.json``; strongly typed in one precision (float32, bf16 or fp16 weights and activations; float32
images in and outputs out). docs/exporter.md has the decisions and measurements.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import onnx
import torch
from torch import nn

from lite3r._io import check_writable_dir, staged_output
from lite3r.calibration.state import QuantStateError, read_quant_state, validate_quant_state
from lite3r.exporter import PRECISION_KEY, PRECISION_NAMES, SLA_CORE_KEY, graph_passes, sla_onnx
from lite3r.exporter.qdq import insert_fp8_qdq
from lite3r.exporter.sla_onnx import SLAExportError, SLAOptions
from lite3r.models import family_of
from lite3r.sla.module import runtime_settings_error

INPUT_NAME = "images"
FRAMES = "frames"  # dim_param of the frame axis
OPSETS = (19, 20, 21, 22)  # FP8 Q/DQ need 19; TensorRT 10 and TensorRT-RTX 1.7 parse up to 22
DEFAULT_OPSET = 21
MIN_OPSET = {"bf16": 22}  # Conv and ConvTranspose take bfloat16 from opset 22
PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16)))
# Protobuf cannot serialise 2 GiB; above this much tensor data the weights go to ``<name>.data``.
EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportError(ValueError):
    """The model or the export options cannot give a valid ONNX model."""


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote."""

    path: Path
    external_data: Path | None  # the weights file, when the model is too large for one protobuf
    opset: int
    precision: str  # "fp32", "bf16" or "fp16": weights and activations (images in and outputs out are float32)
    image_size: tuple[int, int]
    nodes: int  # top-level graph nodes (an SLA node counts one)
    sla_nodes: int
    qdq_pairs: int  # activation Q->DQ pairs plus FP8 weight->DQ pairs
    file_bytes: int  # model plus external data
    seconds: float
    sla_core: str = "none"  # how TensorRT can run the SLA cores: "plugin", or "function body (<why>)"

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        data = f" + {self.external_data.name}" if self.external_data else ""
        core = f" (SLA core in TensorRT: {self.sla_core})" if self.sla_nodes else ""
        return (
            f"{self.path}{data}: {self.file_bytes / 2**20:.1f} MiB, {self.precision}, opset {self.opset}, images "
            f"[1, S, 3, {self.image_size[0]}, {self.image_size[1]}], {self.nodes} nodes, {self.sla_nodes} SLA "
            f"nodes{core}, {self.qdq_pairs} FP8 Q/DQ pairs, exported in {self.seconds:.1f} s"
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    example_frames: int = 2,
    quant_state: dict[str, Any] | str | os.PathLike | None = None,
    precision: str | None = None,
    opset: int | None = None,
    simplify: bool = True,
) -> ExportReport:
    """Export ``model`` (a lite3r model, dense or SLA) to ``path``; nothing is written unless the whole export and
    ``onnx.checker`` (full check) succeed.

    ``image_size``: H, W fixed in the graph (multiples of the patch size; default: the family's view size).
    ``example_frames``: the frame count traced, at least 2 (a 1-frame trace would fix the frame axis; the graph
    runs at any S >= 1).
    ``quant_state``: a ``quant_state.json`` path or dict; its linears get FP8 Q/DQ. A model carrying ModelOpt
    fake quantizers is traced with them switched off and, without ``quant_state``, gives its own scales.
    ``simplify``: constant folding and graph simplification (the exporter's onnxscript optimizer).
    ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"`` weights and activations; by default the model's own
    (a model in another dtype is exported from a converted copy; the model itself is untouched).
    ``opset``: 19 to 22; by default 21, or 22 for bf16 (the first opset with bf16 convolutions).
    """
    started = time.perf_counter()
    path = Path(path)
    _check_model(model)
    size = _check_image_size(model, family_of(model).image_size if image_size is None else image_size)
    if not isinstance(example_frames, int) or example_frames < 1:
        raise ExportError(f"example_frames must be a positive integer; got {example_frames!r}")
    precision = _precision(model, precision)
    opset = _opset(opset, precision)
    state = _quant_state(model, quant_state)
    options = _sla_options(model)
    sla_core = _sla_core(model, precision)
    check_writable_dir(path.parent)  # fail now, not after minutes of tracing

    converted = as_dtype(model, PRECISIONS[precision])
    with _quantizers_disabled(converted):
        proto = _trace(converted, size, max(2, example_frames), opset, simplify)
    del converted
    if precision == "bf16":
        graph_passes.transposed_convolutions_as_depth_to_space(proto.graph)
    if options is not None:
        proto.functions.extend(sla_onnx.sla_functions(options, opset, precision=precision, plugin=sla_core == "plugin"))
        if not any(o.domain == sla_onnx.DOMAIN for o in proto.opset_import):
            proto.opset_import.append(onnx.helper.make_opsetid(sla_onnx.DOMAIN, 1))
    qdq_pairs = insert_fp8_qdq(proto, state, sla_onnx.ONNX_TYPES[precision]) if state is not None else 0
    onnx.helper.set_model_props(proto, {PRECISION_KEY: precision, **({SLA_CORE_KEY: sla_core} if options else {})})
    nodes = len(proto.graph.node)
    sla_nodes = sum(n.domain == sla_onnx.DOMAIN and n.op_type == sla_onnx.SLA_OP for n in proto.graph.node)
    external = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES

    with staged_output(path.parent, writer=f"export:{path.name}") as stage:
        target = stage / path.name
        data_name = f"{path.name}.data"
        onnx.save_model(proto, target, save_as_external_data=external, location=data_name, size_threshold=1024)
        del proto
        try:
            onnx.checker.check_model(str(target), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported model fails onnx.checker: {str(e).splitlines()[0]}") from None
        file_bytes = sum(f.stat().st_size for f in stage.iterdir())
    return ExportReport(
        path=path,
        external_data=path.with_name(data_name) if external else None,
        opset=opset,
        precision=precision,
        image_size=size,
        nodes=nodes,
        sla_nodes=sla_nodes,
        qdq_pairs=qdq_pairs,
        file_bytes=file_bytes,
        seconds=time.perf_counter() - started,
        sla_core=sla_core,
    )


def _check_image_size(model: nn.Module, image_size: int | tuple[int, int]) -> tuple[int, int]:
    patch = getattr(getattr(model, "config", None), "patch_size", 14)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 and s % patch == 0 for s in size):
        hint = "x".join(str(max(patch, round(s / patch) * patch)) for s in size if isinstance(s, (int, float)))
        raise ExportError(
            f"image_size must be (H, W) with positive multiples of the patch size {patch}; got {image_size!r}"
            + (f" (nearest: {hint})" if len(size) == 2 and hint.count("x") == 1 else "")
        )
    return size  # type: ignore[return-value]


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "family"):
        raise ExportError(f"export_onnx takes a lite3r model (lite3r.load_model); got {type(model).__name__}")
    if reason := runtime_settings_error(model):
        raise ExportError(reason)


def precision_of(dtype: torch.dtype) -> str | None:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a torch dtype; None for any other."""
    return next((name for name, known in PRECISIONS.items() if known == dtype), None)


def graph_precision(path: str | os.PathLike) -> str | None:
    """The precision an exported file computes in (its ``lite3r.precision`` metadata), or None if not recorded."""
    props = onnx.load(os.fspath(path), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == PRECISION_KEY), None)


def _precision(model: nn.Module, precision: str | None) -> str:
    if precision is not None:
        if precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        return precision
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) == 1 and (own := precision_of(next(iter(dtypes)))):
        return own
    raise ExportError(
        f"the model's parameters are {sorted(map(str, dtypes))}: pass precision= (one of {', '.join(PRECISIONS)})"
    )


def _opset(opset: int | None, precision: str) -> int:
    lowest = MIN_OPSET.get(precision, OPSETS[0])
    if opset is None:
        return max(DEFAULT_OPSET, lowest)
    if opset not in OPSETS:
        raise ExportError(f"opset must be one of {OPSETS} (FP8 Q/DQ need 19); got {opset!r}")
    if opset < lowest:
        raise ExportError(f"a {precision} graph needs opset {lowest} or later (bf16 convolutions); got {opset}")
    return opset


def as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model itself when its parameters are ``dtype`` already, else a converted copy (the caller's model is
    never changed; a model converted beforehand saves the copy's memory)."""
    return model if {p.dtype for p in model.parameters()} == {dtype} else copy.deepcopy(model).to(dtype)


def _quant_state(model: nn.Module, quant_state: dict[str, Any] | str | os.PathLike | None) -> dict | None:
    """The validated quant state, checked against the model's modules before any tracing."""
    if quant_state is None:
        if not _enabled_quantizers(model):
            return None
        from lite3r.calibration.state import quant_state as state_of

        return state_of(model)
    state = validate_quant_state(quant_state) if isinstance(quant_state, dict) else read_quant_state(quant_state)
    modules = dict(model.named_modules())
    sla_cores = [name for name, m in modules.items() if isinstance(m, _sla_core_class())]
    for entry in state["quantizers"]:
        name = entry["module"]
        if not isinstance(modules.get(name), nn.Linear):
            raise QuantStateError(
                f"quant state names {name!r}, which is not an nn.Linear layer of this model "
                "(a quant state of another model or architecture?)"
            )
        if any(name.startswith(f"{core}.") for core in sla_cores):
            raise QuantStateError(f"quant state names {name!r}, inside an SLA core: SLA nodes run unquantized")
    return state


def _enabled_quantizers(model: nn.Module) -> list[nn.Module]:
    """ModelOpt fake quantizers that are on (ModelOpt is imported only when the model has its modules)."""
    if not any(type(m).__module__.startswith("modelopt") for m in model.modules()):
        return []
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [m for m in model.modules() if isinstance(m, TensorQuantizer) and m.is_enabled]


@contextlib.contextmanager
def _quantizers_disabled(model: nn.Module) -> Iterator[None]:
    """Trace the float computation: FP8 enters the graph as Q/DQ from the quant state, not as traced fake quant."""
    enabled = _enabled_quantizers(model)
    for quantizer in enabled:
        quantizer.disable()
    try:
        yield
    finally:
        for quantizer in enabled:
            quantizer.enable()


def _sla_core_class() -> type:
    from lite3r.sla.module import SparseLinearAttention

    return SparseLinearAttention


def _sla_core(model: nn.Module, precision: str) -> str:
    """``"plugin"`` when the SLA plugin can run every SLA core of the graph (their nested nodes are then marked for
    it), else ``"function body (<why not>)"``; ``"none"`` without SLA layers."""
    head_dims = {m.proj_lin.in_features for m in model.modules() if isinstance(m, _sla_core_class())}
    if not head_dims:
        return "none"
    reason = sla_onnx.plugin_unsupported(precision, head_dims)
    return "plugin" if reason is None else f"function body ({reason})"


def _sla_options(model: nn.Module) -> SLAOptions | None:
    cores = [m for m in model.modules() if isinstance(m, _sla_core_class())]
    found = {SLAOptions(m.kh, m.kl, m.block_q, m.block_k, m.feature_map) for m in cores}
    if len(found) > 1:
        raise SLAExportError(
            f"all SLA layers of an exported model must share one option set (kh, kl, block_q, block_k, "
            f"feature_map); this model has {len(found)}: {sorted(found)}"
        )
    options = next(iter(found), None)
    if options is not None:
        sla_onnx.count_fractions(options.kh, options.kl)  # an inexact kh/kl fails here, before tracing
    return options


def _trace(model: nn.Module, size: tuple[int, int], frames: int, opset: int, simplify: bool) -> onnx.ModelProto:
    """torch.export with a dynamic frame axis (an error, not a silent static graph, if the code specialises it),
    then the ONNX translation with the SLA op mapped to one custom node."""
    from torch.fx.experimental import _config as fx_config

    device = next(model.parameters()).device
    images = torch.rand(1, frames, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        # Size-oblivious guards: "is S - 1 == 1" (true at 2 traced frames) must not turn S into a constant.
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
            try:
                program = torch.export.export(
                    model, (images,), dynamic_shapes={"images": {1: torch.export.Dim(FRAMES, min=2)}}, strict=False
                )
            except torch._dynamo.exc.UserError as e:
                lines = [line.strip(" -") for line in str(e).strip().splitlines()]
                detail = next((line for line in lines if line.startswith(("Not all values", "solving"))), lines[0])
                raise ExportError(f"the frame axis cannot stay dynamic: {detail}") from None
        keys = list(program.call_spec.out_spec.context)
        outputs = family_of(model).outputs
        if sorted(keys) != sorted(outputs):
            raise ExportError(f"the model must return a dict with keys {outputs}; it returns {keys}")
        with _sla_schema():
            onnx_program = torch.onnx.export(
                program, (images,), dynamo=True, input_names=[INPUT_NAME], output_names=keys, opset_version=opset,
                custom_translation_table={torch.ops.lite3r.sparse_linear_attention.default: _translate_sla},
                optimize=simplify, verbose=False,
            )  # fmt: skip
    finally:
        model.train(was_training)
    proto = onnx_program.model_proto
    graph_passes.name_axis(proto.graph, proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param, FRAMES)
    graph_passes.float64_to_float32(proto.graph)
    graph_passes.outputs_to_float32(proto.graph)
    ordered = sorted(proto.graph.output, key=lambda o: outputs.index(o.name))
    ordered = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in ordered]
    del proto.graph.output[:]
    proto.graph.output.extend(ordered)  # the contract's order, whatever the model's dict order
    return proto


def _translate_sla(q, k, v, weight, bias, kh, kl, block_q, block_k, feature_map, backend):
    """``torch.ops.lite3r.sparse_linear_attention`` -> one ``lite3r::SparseLinearAttention`` node (``backend`` is a
    PyTorch dispatch choice and has no ONNX meaning)."""
    from onnxscript.values import Opset

    attributes = SLAOptions(kh, kl, block_q, block_k, feature_map).node_attributes(int(q.shape[-1]))
    return Opset(sla_onnx.DOMAIN, 1).SparseLinearAttention(q, k, v, weight, bias, **attributes)


@contextlib.contextmanager
def _sla_schema() -> Iterator[None]:
    """Register the node's ONNX schema while the exporter runs: onnxscript only emits ops it has a schema for."""
    from onnx import defs

    if defs.has(sla_onnx.SLA_OP, sla_onnx.DOMAIN):
        yield
        return
    param = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    schema = defs.OpSchema(
        sla_onnx.SLA_OP, sla_onnx.DOMAIN, 1,
        inputs=[param(name, "T") for name in sla_onnx.SLA_INPUTS],
        outputs=[param("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "q, k, v, out")],
        attributes=[attr(name, getattr(defs.OpSchema.AttrType, kind), "")
                    for name, kind in sla_onnx.SLA_ATTRIBUTES.items()],
    )  # fmt: skip
    defs.register_schema(schema)
    try:
        yield
    finally:
        defs.deregister_schema(sla_onnx.SLA_OP, 1, sla_onnx.DOMAIN)
