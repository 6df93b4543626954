"""FP8 QuantizeLinear/DequantizeLinear on the exported float graph, from ``quant_state.json``.

Each quantized ``nn.Linear`` is found by the module scope the PyTorch exporter records on its MatMul node. Its
activation input gets ``Q -> DQ`` (FLOAT8E4M3FN, per-tensor scale ``amax / 448``); its weight becomes
a FLOAT8E4M3FN initialiser followed by ``DQ`` (per-tensor, or per output channel). Scales are stored in the
graph's precision, as ModelOpt's ONNX export does (``QuantizeLinear`` before opset 23 takes its scale in its input's
type), and the FP8 weights are computed with the stored scale, so weight and ``DQ`` agree exactly. The scales divide, as
``QuantizeLinear`` does; ModelOpt's fake quantizer multiplies by ``448 / amax``, which can round a value that sits
exactly between two FP8 numbers the other way (docs/exporter.md has the measured effect).
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
from lite3r.quant import E4M3_MAX

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_ZERO_POINT = "fp8_e4m3_zero_point"


def insert_fp8_qdq(model: onnx.ModelProto, state: dict[str, Any], dtype: int = TensorProto.FLOAT) -> int:
    """Quantize the linears listed in ``state`` (a validated quant state) in place; returns the Q/DQ pairs added
    (an activation's ``Q -> DQ`` and a weight's FP8 initialiser ``-> DQ`` count one each). ``dtype``: the ONNX
    element type the linears compute in (that of the scales)."""
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
            node.input[0] = _quantize_activation(
                graph, inserted[id(node)], module, node.input[0], _scale(tensors["input"], module, dtype)
            )
            pairs += 1
        if "weight" in tensors:
            scale = _scale(tensors["weight"], module, dtype)
            replaced.add(_quantize_weight(graph, inserted, module, node, scale, initializers, producers))
            pairs += 1
    graph.initializer.append(helper.make_tensor(_ZERO_POINT, TensorProto.FLOAT8E4M3FN, [], [0.0]))
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


def _scale(entry: dict, module: str, dtype: int) -> np.ndarray:
    """``amax / 448`` in float32, then rounded to ``dtype`` (the ONNX element type of the scale)."""
    amax = np.asarray(entry["amax"], dtype=np.float32)
    if not np.all(amax > 0):
        raise QuantStateError(f"{module}.{entry['tensor']}_quantizer has amax 0: no FP8 scale can represent it")
    return np.asarray(amax / np.float32(E4M3_MAX), dtype=np.float32).astype(helper.tensor_dtype_to_np_dtype(dtype))


def _add_scale(graph: onnx.GraphProto, name: str, scale: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(scale, name))
    return name


def _quantize_activation(graph, new_nodes, module: str, value: str, scale: np.ndarray) -> str:
    scale = _add_scale(graph, f"{module}.input_quantizer.scale", scale)
    quantized, dequantized = f"{module}.input_quantizer.fp8", f"{module}.input_quantizer.dq"
    new_nodes += [
        helper.make_node("QuantizeLinear", [value, scale, _ZERO_POINT], [quantized], name=f"{module}.input_q"),
        helper.make_node("DequantizeLinear", [quantized, scale], [dequantized], name=f"{module}.input_dq"),
    ]
    return dequantized


def _quantize_weight(graph, inserted, module: str, node, scale: np.ndarray, initializers, producers) -> str:
    """Feed ``node`` (directly, or through one Transpose) an FP8 copy of its weight + DQ; returns the float
    weight's name."""
    consumer, slot, output_axis = node, 1, 1  # MatMul(x, W^T): W^T is [in, out]
    producer = producers.get(node.input[1])
    if producer is not None and producer.op_type == "Transpose":
        consumer, slot, output_axis = producer, 0, 1 - output_axis
    weight = initializers.get(consumer.input[slot])
    if weight is None:
        raise QuantStateError(f"{module}: its weight is computed in the exported graph, not stored; cannot quantize it")
    values = torch.from_numpy(numpy_helper.to_array(weight).astype(np.float32))
    per_channel = scale.ndim == 1
    shape = [1, 1]
    if per_channel:
        shape[output_axis] = -1
    divisor = torch.from_numpy(scale.astype(np.float32)).reshape(shape)
    fp8 = (values / divisor).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    fp8_name = f"{module}.weight_fp8"
    raw = fp8.view(torch.uint8).numpy().tobytes()
    graph.initializer.append(helper.make_tensor(fp8_name, TensorProto.FLOAT8E4M3FN, list(fp8.shape), raw, raw=True))
    scale_name = _add_scale(graph, f"{module}.weight_quantizer.scale", scale)
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

