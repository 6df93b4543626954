"""How each ``lite3r`` custom node of an ONNX model ended up in a TensorRT network.

The ONNX parser turns a custom node into one plugin layer when a plugin with the node's op type, version and
``plugin_namespace`` is registered, and otherwise inlines the node's model-local function body as ordinary
layers (which may themselves contain plugin layers of nested custom nodes). Every layer's metadata names the
ONNX node it came from followed by the function instances it was inlined from, innermost first:
``[ONNX Layer: node_of_t | core_0 (SparseLinearAttentionCore) | attn_0 (SparseLinearAttention)]``.
Unnamed nodes are called ``node_of_<first output>`` by the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import onnx

Resolution = Literal["plugin", "function+plugin", "function", "missing"]
_FRAME = re.compile(r"^(.*) \(([^()]*)\)$")


@dataclass(frozen=True)
class CustomNode:
    name: str  # as the parser names it
    op_type: str


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # trt.LayerType name, e.g. "PLUGIN_V3"
    metadata: str

    @property
    def is_plugin(self) -> bool:
        return self.kind.startswith("PLUGIN")


@dataclass(frozen=True)
class NodeResolution:
    node: str
    op_type: str
    resolved: Resolution
    layers: int  # network layers that implement the node
    plugin_layers: tuple[str, ...]  # the plugin layers among them

    @property
    def on_plugin(self) -> bool | None:
        """Whether a plugin runs the node (itself, or the nested node that does its work); None when missing."""
        return None if self.resolved == "missing" else self.resolved != "function"

    def describe(self) -> str:
        detail = {
            "plugin": "plugin (the node is one plugin layer)",
            "function+plugin": f"plugin (function body of {self.layers} layers around plugin layer(s) "
            f"{', '.join(self.plugin_layers)})",
            "function": f"function body ({self.layers} layers, no plugin)",
            "missing": "missing (no layer in the network comes from it)",
        }[self.resolved]
        return f"{self.node} ({self.op_type}): {detail}"


def custom_nodes(model: onnx.ModelProto, domain: str = "lite3r") -> list[CustomNode]:
    """The graph's nodes of ``domain``, named the way the ONNX parser names them."""
    return [
        CustomNode(node.name or f"node_of_{node.output[0]}", node.op_type)
        for node in model.graph.node
        if node.domain == domain
    ]


def network_layers(network: Any) -> list[LayerInfo]:
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [LayerInfo(layer.name, layer.type.name, layer.metadata) for layer in layers]


def _origin(metadata: str) -> tuple[str, list[str]]:
    """``(onnx node name, names of the enclosing function instances)`` from a layer's metadata."""
    body = metadata.removeprefix("[ONNX Layer: ").removesuffix("]")
    node, *frames = body.split(" | ")
    return node, [m.group(1) for m in map(_FRAME.match, frames) if m]


def resolve(nodes: Iterable[CustomNode], layers: Iterable[LayerInfo]) -> list[NodeResolution]:
    origins = [(layer, *_origin(layer.metadata)) for layer in layers if layer.metadata]
    results = []
    for node in nodes:
        direct = [layer for layer, name, frames in origins if name == node.name and not frames]
        inlined = [layer for layer, _, frames in origins if node.name in frames]
        if any(layer.is_plugin for layer in direct):
            resolved: Resolution = "plugin"
            mine = direct
        elif inlined:
            mine = inlined
            resolved = "function+plugin" if any(layer.is_plugin for layer in inlined) else "function"
        else:
            mine, resolved = [], "missing"
        plugins = tuple(layer.name for layer in mine if layer.is_plugin)
        results.append(NodeResolution(node.name, node.op_type, resolved, len(mine), plugins))
    return results
