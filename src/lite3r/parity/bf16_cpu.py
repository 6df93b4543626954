"""bf16 ONNX models on ONNX Runtime's CPU provider, which has bf16 kernels for data movement only.

ONNX Runtime's CPU provider implements Cast, Reshape, Concat, Gather, LayerNormalization and a few more for bf16,
but no MatMul, Add, Conv or Softmax. For fp16 it bridges the gap itself (its ``InsertCastTransformer`` runs a node
without an fp16 kernel in float32 between Casts); ``emulate_bf16`` does the same for bf16, on a copy of the model:
every node that has a bf16 input or output and no bf16 CPU kernel reads its bf16 inputs cast to float32 (exact)
and rounds its float32 outputs to bf16 (round to nearest even). Each op thus computes in float32 and rounds its
result to bf16, which is what a strongly typed bf16 TensorRT network does with its layers. The file itself is not
changed; docs/deploy.md ("Parity") has the decision.
"""

from __future__ import annotations

import functools
import os

import onnx
import onnx.inliner
from onnx import TensorProto, helper

_CPU = "CPUExecutionProvider"


def has_bf16(model: onnx.ModelProto) -> bool:
    """Whether the graph stores or computes anything in bf16 (weights, inputs, outputs or typed values)."""
    graph = model.graph
    values = (*graph.input, *graph.output, *graph.value_info)
    return any(i.data_type == TensorProto.BFLOAT16 for i in graph.initializer) or any(
        v.type.tensor_type.elem_type == TensorProto.BFLOAT16 for v in values
    )


def emulate_bf16(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """A copy of ``model`` (or of the file) that ONNX Runtime's CPU provider runs, with bf16 rounding after every
    op that the provider cannot run in bf16. Model-local functions are inlined first, so their bodies count too."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    model = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    opsets = {o.domain or "": o.version for o in model.opset_import}
    nodes, widened = [], {}
    for node in graph.node:
        bf16_inputs = [n for n in node.input if types.get(n) == TensorProto.BFLOAT16]
        bf16_outputs = [n for n in node.output if types.get(n) == TensorProto.BFLOAT16]
        if not (bf16_inputs or bf16_outputs) or _has_kernel(node, types, opsets.get(node.domain, 1)):
            nodes.append(node)
            continue
        for name in bf16_inputs:
            if name not in widened:
                widened[name] = f"{name}__as_float32"
                nodes.append(helper.make_node("Cast", [name], [widened[name]], to=TensorProto.FLOAT))
        node.input[:] = [widened.get(n, n) if n in bf16_inputs else n for n in node.input]
        rounded = []
        for i, name in enumerate(node.output):
            if name in bf16_outputs:
                node.output[i] = f"{name}__in_float32"
                rounded.append(helper.make_node("Cast", [node.output[i]], [name], to=TensorProto.BFLOAT16))
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
                bound.append((param.type_str, helper.tensor_dtype_to_string(types[name])))
    for kernel in _cpu_kernels().get((node.domain, node.op_type), []):
        start, end = kernel.version_range
        constraints = kernel.type_constraints
        if start <= schema.since_version <= end and all(
            _type_string(dtype) in constraints[param] for param, dtype in bound if param in constraints
        ):
            return True
    return False


def _type_string(dtype_name: str) -> str:
    """``TensorProto.BFLOAT16`` -> ``tensor(bfloat16)``, the spelling of ONNX Runtime's type constraints."""
    return f"tensor({dtype_name.removeprefix('TensorProto.').lower()})"
