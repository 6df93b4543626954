"""Small rewrites of the exported ONNX graph that the PyTorch exporter leaves to us."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


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


def outputs_to_float32(graph: onnx.GraphProto) -> int:
    """Cast every non-float32 graph output to float32 at the very end; returns the number of outputs cast.

    A 16-bit export keeps the contract's float32 outputs (as its input stays float32), so every runtime and
    the parity runners read all precisions the same way; the cast costs one pass over the outputs.
    """
    cast = 0
    for output in graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT:
            continue
        inner = f"{output.name}_{TensorProto.DataType.Name(tensor_type.elem_type).lower()}"
        for node in graph.node:
            node.input[:] = [inner if name == output.name else name for name in node.input]
            node.output[:] = [inner if name == output.name else name for name in node.output]
        graph.node.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_to_float32",
                                           to=TensorProto.FLOAT))  # fmt: skip
        tensor_type.elem_type = TensorProto.FLOAT
        cast += 1
    return cast


def transposed_convolutions_as_depth_to_space(graph: onnx.GraphProto) -> int:
    """Rewrite each non-overlapping ``ConvTranspose`` (kernel == stride, no padding, dilation or groups) as a 1x1
    ``Conv`` to ``C_out * k * k`` channels followed by ``DepthToSpace`` (CRD); returns the number rewritten.

    Exact: every output pixel is one product sum over the input channels either way. TensorRT-RTX 1.7 cannot
    build a bf16 deconvolution (Myelin: "Could not infer output types ... deconv"), while a bf16 convolution and a
    DepthToSpace build; VGGT's DPT heads upsample with exactly such transposed convolutions (k = 4 and 2).
    """
    initializers = {init.name: init for init in graph.initializer}
    nodes, unused, rewritten = [], set(), 0
    for node in graph.node:
        block = _non_overlapping_kernel(node, initializers) if node.op_type == "ConvTranspose" else None
        if block is None:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])  # [C_in, C_out, k, k]
        c_in, c_out = weight.shape[:2]
        # DepthToSpace CRD reads channel c * k * k + i * k + j as pixel (i, j) of output channel c.
        as_conv = np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(c_out * block * block, c_in, 1, 1))
        inputs = [node.input[0], f"{node.input[1]}.as_1x1"]
        graph.initializer.append(numpy_helper.from_array(as_conv, inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = np.repeat(numpy_helper.to_array(initializers[node.input[2]]), block * block)
            inputs.append(f"{node.input[2]}.as_1x1")
            graph.initializer.append(numpy_helper.from_array(bias, inputs[2]))
        blocks = f"{node.output[0]}_blocks"
        nodes += [
            helper.make_node("Conv", inputs, [blocks], name=f"{node.name}_1x1", kernel_shape=[1, 1]),
            helper.make_node("DepthToSpace", [blocks], list(node.output), name=node.name, blocksize=block, mode="CRD"),
        ]
        unused.update(node.input[1:])
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    unused -= {name for node in graph.node for name in node.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in unused:
            del graph.initializer[i]
    return rewritten


def _non_overlapping_kernel(node: onnx.NodeProto, initializers: dict) -> int | None:
    """k for a ``ConvTranspose`` with a constant square k x k kernel, stride k and no padding, dilation or
    groups; None for any other."""
    if not all(name in initializers for name in node.input[1:] if name):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs.get("kernel_shape") or initializers[node.input[1]].dims[2:])
    plain = (
        len(kernel) == 2 and kernel[0] == kernel[1] and list(attrs.get("strides", [1, 1])) == kernel
        and not any(attrs.get("pads", [])) and not any(attrs.get("output_padding", []))
        and set(attrs.get("dilations", [1])) == {1} and attrs.get("group", 1) == 1
        and attrs.get("auto_pad", b"NOTSET") == b"NOTSET" and "output_shape" not in attrs
    )  # fmt: skip
    return kernel[0] if plain else None
