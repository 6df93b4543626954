"""Small rewrites of the exported ONNX graph that the PyTorch exporter leaves to us."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


def name_axis(graph: onnx.GraphProto, symbol: str, name: str) -> None:
    """Rename the symbolic dimension ``symbol`` (e.g. the exporter's ``s90``) to ``name`` everywhere, also inside
    derived dimensions such as ``69*s90``."""
    pattern = re.compile(rf"\b{re.escape(symbol)}\b")
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(name, dim.dim_param)


def float64_to_float32(graph: onnx.GraphProto) -> int:
    """Compute in float32 what the model computes in float64; returns the number of rewritten tensors and nodes.

    TensorRT has no float64 (its ONNX parser demotes it with a warning), so the graph states the precision that
    actually runs. In VGGT only the DPT heads' sin/cos position embedding is float64 (angles in [-1, 1], so the
    float32 result differs by about 1e-7 before the embedding's 0.1 factor). Folding it into constants instead
    would add the full-resolution embedding of both heads to the file (about 300 MB at 518 x 518).
    """
    changed = 0
    for init in graph.initializer:
        changed += _demote(init)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.DOUBLE:
                attr.i = TensorProto.FLOAT
                changed += 1
            elif attr.type == onnx.AttributeProto.TENSOR:
                changed += _demote(attr.t)
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.type.tensor_type.elem_type == TensorProto.DOUBLE:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return changed


def _demote(tensor: onnx.TensorProto) -> int:
    if tensor.data_type != TensorProto.DOUBLE:
        return 0
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
    return 1
