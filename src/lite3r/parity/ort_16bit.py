"""16-bit ONNX models on ONNX Runtime's CPU provider, rounded to their precision after every op.

The CPU provider has bf16 kernels for data movement only (Cast, Reshape, Concat, Gather, LayerNormalization and
a few more: no MatMul, Add, Conv or Softmax), so a bf16 graph does not even load. For fp16 it bridges the gap
itself (``InsertCastTransformer``: float32 between Casts) but drops the fp16 round trips between neighbouring
float32 ops, so a chain of them runs in float32 throughout (measured: Mul then Neg of fp16 values is not rounded
in between). ``per_op_rounding`` makes a copy that ONNX Runtime runs faithfully in both cases: every node that
has a 16-bit input or output and no CPU kernel for those types reads its 16-bit inputs cast to float32 (exact)
and rounds each 16-bit output back (round to nearest even). Each op thus computes in float32 and rounds its
result, as a strongly typed TensorRT network does with its layers. The file itself is not changed (the copy
goes to ``per_op_rounding_file``'s folder); docs/deploy.md ("Parity") has the decision.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import onnx
import onnx.inliner
from onnx import TensorProto, helper

HALF_TYPES = (TensorProto.BFLOAT16, TensorProto.FLOAT16)
_CPU = "CPUExecutionProvider"


def is_16bit(model: onnx.ModelProto) -> bool:
    """Whether the graph stores or computes anything in bf16 or fp16 (weights, inputs, outputs, typed values)."""
    graph = model.graph
    values = (*graph.input, *graph.output, *graph.value_info)
    return any(i.data_type in HALF_TYPES for i in graph.initializer) or any(
        v.type.tensor_type.elem_type in HALF_TYPES for v in values
    )


def per_op_rounding_file(onnx_path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write ``per_op_rounding`` of the file at ``onnx_path`` into ``folder`` (weights as external data, so a
    model over protobuf's 2 GiB works too) and return its path."""
    onnx_path, folder = Path(onnx_path), Path(folder)
    model = per_op_rounding(onnx.load(str(onnx_path), load_external_data=False))  # the graph alone: small
    onnx.load_external_data_for_model(model, str(onnx_path.parent))
    path = folder / onnx_path.name
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def per_op_rounding(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every 16-bit op that the CPU provider cannot run in its type computes in
    float32 between explicit Casts. Model-local functions are inlined first, so their bodies count too. Only the
    graph is read: initializers may still be external references."""
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    opsets = {o.domain or "": o.version for o in model.opset_import}
    nodes, widened = [], {}
    for node in graph.node:
        half_inputs = {n for n in node.input if types.get(n) in HALF_TYPES}
        half_outputs = {n for n in node.output if types.get(n) in HALF_TYPES}
        if not (half_inputs or half_outputs) or _has_kernel(node, types, opsets.get(node.domain, 1)):
            nodes.append(node)
            continue
        for name in sorted(half_inputs - widened.keys()):
            widened[name] = f"{name}__as_float32"
            nodes.append(helper.make_node("Cast", [name], [widened[name]], to=TensorProto.FLOAT))
        node.input[:] = [widened[n] if n in half_inputs else n for n in node.input]
        rounded = []
        for i, name in enumerate(node.output):
            if name in half_outputs:
                node.output[i] = f"{name}__in_float32"
                rounded.append(helper.make_node("Cast", [node.output[i]], [name], to=types[name]))
        nodes += [node, *rounded]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


@functools.cache
def _cpu_kernels() -> dict[tuple[str, str], list]:
    """(domain, op type) -> the CPU provider's kernel definitions (version range and type constraints)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    kernels: dict[tuple[str, str], list] = {}
    for kernel in ort_state.get_all_opkernel_def():
        if kernel.provider == _CPU:
            kernels.setdefault((kernel.domain, kernel.op_name), []).append(kernel)
    return kernels


def _has_kernel(node: onnx.NodeProto, types: dict[str, int], opset: int) -> bool:
    """Whether a CPU kernel of the node's op, at the model's opset, accepts the node's tensor types."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return False
    bound = []  # (type constraint name, the node's type for it)
    for params, names in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for i, name in enumerate(names):
            if name and name in types and params:
                param = params[min(i, len(params) - 1)]  # variadic: the last parameter repeats
                bound.append((param.type_str, _type_string(types[name])))
    for kernel in _cpu_kernels().get((node.domain, node.op_type), []):
        start, end = kernel.version_range
        constraints = kernel.type_constraints
        if start <= schema.since_version <= end and all(
            dtype in constraints[param] for param, dtype in bound if param in constraints
        ):
            return True
    return False


def _type_string(elem_type: int) -> str:
    """``TensorProto.BFLOAT16`` -> ``tensor(bfloat16)``, the spelling of ONNX Runtime's type constraints."""
    return f"tensor({TensorProto.DataType.Name(elem_type).lower()})"
