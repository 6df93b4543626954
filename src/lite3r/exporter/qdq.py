"""FP8 QuantizeLinear/DequantizeLinear on the exported float graph, from ``quant_state.json``.

Each quantized ``nn.Linear`` is found by the module scope the PyTorch exporter records on its MatMul node. Its
activation input gets ``Mul(448 / amax) -> Q(scale 1) -> DQ(scale 1 / (448 / amax))`` (FLOAT8E4M3FN, per tensor);
its weight becomes a FLOAT8E4M3FN initialiser followed by ``DQ`` (per tensor, or per output channel). All numbers
come from :mod:`lite3r.quant`, ModelOpt's convention: ``QuantizeLinear`` divides by its scale, and no float32
scale ``s`` makes ``x / s`` round like ``x * (448 / amax)`` for every ``x``, so the multiplication is a ``Mul`` of
its own and the ``QuantizeLinear`` scale is exactly 1 (``x / 1 == x``). The e4m3 codes are then ModelOpt's bit for
bit (``tests/exporter/test_fp8_convention.py`` sweeps amax values through onnxruntime).

In a bf16/fp16 graph the codes stay ModelOpt's: ModelOpt casts a 16-bit input to float32 before it multiplies, and
so does the graph (``Cast -> Mul -> QuantizeLinear`` in float32; a 16-bit ``Mul`` would round ``x * m`` to 16 bits
first and flip about one code in 30). The ``DequantizeLinear`` scales are stored in the graph's precision, so the
linears compute in it (a strongly typed TensorRT network takes a DQ's output type from its scale).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from lite3r.calibration.state import QuantStateError
from lite3r.quant import fp8_dequant_scale, fp8_multiplier, quantize_e4m3

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_ZERO_POINT = "fp8_e4m3_zero_point"
_UNIT_SCALE = "fp8_e4m3_unit_scale"


def insert_fp8_qdq(model: onnx.ModelProto, state: dict[str, Any], dtype: int = TensorProto.FLOAT) -> int:
    """Quantize the linears listed in ``state`` (a validated quant state) in place; returns the Q/DQ pairs added
    (an activation's ``Q -> DQ`` and a weight's FP8 initialiser ``-> DQ`` count one each). ``dtype``: the ONNX
    element type the linears compute in (that of the ``DequantizeLinear`` scales)."""
    graph = model.graph
    entries: dict[str, dict[str, dict]] = defaultdict(dict)
    for entry in state["quantizers"]:
        entries[entry["module"]][entry["tensor"]] = entry
    linears = _linear_nodes(graph)
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    inserted: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    pairs, replaced = 0, set()
    for module, tensors in entries.items():
        node = linears.get(module)
        if node is None:
            raise QuantStateError(
                f"quant state names {module}, which is no linear layer of the exported graph "
                "(layers inside an SLA node, such as proj_lin, cannot run in FP8)"
            )
        if "input" in tensors:
            node.input[0] = quantize_activation(
                graph, inserted[id(node)], module, node.input[0], tensors["input"], dtype
            )
            pairs += 1
        if "weight" in tensors:
            replaced.add(
                _quantize_weight(graph, inserted, module, node, tensors["weight"], dtype, initializers, producers)
            )
            pairs += 1
    add_fp8_constants(graph)
    nodes = [new for node in graph.node for new in (*inserted.get(id(node), ()), node)]
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, replaced)
    return pairs


def _linear_nodes(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Module name -> the MatMul node of its ``F.linear`` call, from the exporter's scope metadata."""
    found: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == _SCOPES_KEY), None)
        if scopes is None:
            continue
        *modules, call = ast.literal_eval(scopes)
        if call.startswith("linear") and modules:
            found[modules[-1]] = node
    return found


def add_fp8_constants(graph: onnx.GraphProto) -> None:
    """The zero point and the unit ``QuantizeLinear`` scale (float32) every activation quantizer shares."""
    graph.initializer.append(helper.make_tensor(_ZERO_POINT, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    graph.initializer.append(helper.make_tensor(_UNIT_SCALE, TensorProto.FLOAT, [], [1.0]))


def _multiplier(entry: dict) -> torch.Tensor:
    return fp8_multiplier(torch.tensor(entry["amax"], dtype=torch.float32))


def _add_tensor(graph: onnx.GraphProto, name: str, value: torch.Tensor, dtype: int = TensorProto.FLOAT) -> str:
    """Store float32 ``value`` rounded to ``dtype``; a scale that ``dtype`` cannot hold (fp16 has no normal number
    below 6.1e-5 and flushes below 6e-8) is a clear error instead of a 0 in the graph."""
    rounded = value.numpy().astype(np.float32).astype(helper.tensor_dtype_to_np_dtype(dtype))
    as_float = rounded.astype(np.float32)
    if not np.all(np.isfinite(as_float) & (as_float != 0)):
        raise QuantStateError(
            f"{name} = {value.numpy().tolist()} does not fit {np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).name}: "
            "export in float32 or bf16, or recalibrate"
        )
    graph.initializer.append(numpy_helper.from_array(rounded, name))
    return name


def quantize_activation(
    graph: onnx.GraphProto, new_nodes: list, module: str, value: str, entry: dict, dtype: int = TensorProto.FLOAT
) -> str:
    """Append ``Mul -> QuantizeLinear -> DequantizeLinear`` of ``value`` (of type ``dtype``; other than float32
    through a ``Cast`` to float32 first) to ``new_nodes`` (initialisers go to ``graph``; :func:`add_fp8_constants`
    must be called once); returns the dequantized value's name, of type ``dtype``."""
    multiplier = _multiplier(entry)
    mult = _add_tensor(graph, f"{module}.input_quantizer.multiplier", multiplier)
    scale = _add_tensor(graph, f"{module}.input_quantizer.scale", fp8_dequant_scale(multiplier), dtype)
    scaled, quantized = f"{module}.input_quantizer.scaled", f"{module}.input_quantizer.fp8"
    dequantized = f"{module}.input_quantizer.dq"
    if dtype != TensorProto.FLOAT:
        as_float = f"{module}.input_quantizer.float32"
        new_nodes.append(
            helper.make_node("Cast", [value], [as_float], name=f"{module}.input_cast", to=TensorProto.FLOAT)
        )
        value = as_float
    new_nodes += [
        helper.make_node("Mul", [value, mult], [scaled], name=f"{module}.input_mul"),
        helper.make_node("QuantizeLinear", [scaled, _UNIT_SCALE, _ZERO_POINT], [quantized], name=f"{module}.input_q"),
        helper.make_node("DequantizeLinear", [quantized, scale], [dequantized], name=f"{module}.input_dq"),
    ]
    return dequantized


def _quantize_weight(graph, inserted, module: str, node, entry: dict, dtype: int, initializers, producers) -> str:
    """Feed ``node`` (directly, or through one Transpose) an FP8 copy of its weight + DQ; returns the float
    weight's name."""
    consumer, slot, output_axis = node, 1, 1  # MatMul(x, W^T): W^T is [in, out]
    producer = producers.get(node.input[1])
    if producer is not None and producer.op_type == "Transpose":
        consumer, slot, output_axis = producer, 0, 1 - output_axis
    weight = initializers.get(consumer.input[slot])
    if weight is None:
        raise QuantStateError(f"{module}: its weight is computed in the exported graph, not stored; cannot quantize it")
    multiplier = _multiplier(entry)
    values = torch.from_numpy(numpy_helper.to_array(weight).astype(np.float32))
    per_channel = multiplier.ndim == 1
    shape = [1, 1]
    if per_channel:
        shape[output_axis] = -1
    fp8 = quantize_e4m3(values, multiplier.reshape(shape))
    fp8_name = f"{module}.weight_fp8"
    raw = fp8.view(torch.uint8).numpy().tobytes()
    graph.initializer.append(helper.make_tensor(fp8_name, TensorProto.FLOAT8E4M3FN, list(fp8.shape), raw, raw=True))
    scale_name = _add_tensor(graph, f"{module}.weight_quantizer.scale", fp8_dequant_scale(multiplier), dtype)
    dequantized = f"{module}.weight_quantizer.dq"
    axis = {"axis": output_axis} if per_channel else {}
    inserted[id(consumer)].append(
        helper.make_node("DequantizeLinear", [fp8_name, scale_name], [dequantized], name=f"{module}.weight_dq", **axis)
    )
    consumer.input[slot] = dequantized
    return weight.name


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the float weights that FP8 copies replaced, unless something else still reads them (in place:
    copying a repeated field of large tensors would double the memory)."""
    unused = names - {name for node in graph.node for name in node.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in unused:
            del graph.initializer[i]

