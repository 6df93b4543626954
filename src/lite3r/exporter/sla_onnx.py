"""SLA in ONNX: the ``lite3r::SparseLinearAttention`` node and the model-local functions that define it.

The node keeps SLA one unit for TensorRT (plugin or inlined body) while any ONNX runtime runs it by inlining
two model-local functions, nested like the runtime kernels (``lite3r.sla.kernels``, ``lite3r.plugins``):

- ``SparseLinearAttention(q, k, v, proj_lin_weight, proj_lin_bias)``: the block map (mean-pooled blocks,
  scores, a TopK ranking with the reference's rounding and ties) and the marginal key states, then one call of
- ``SparseLinearAttentionCore(q, k, v, proj_w, proj_b, lut, kv_state, k_state)``: exact softmax over each query
  block's critical key blocks plus ``proj_lin`` of the linear branch; the op of the TensorRT plugin, fed exactly
  the input types the plugin declares (``lite3r.plugins.contract``) and marked for it (``plugin_namespace``)
  only where the plugin can run it, so that TensorRT runs the core's function body everywhere else.

The bodies are specialised to one option set (``SLAOptions``) rather than reading the node's attributes:
ONNX float attributes are float32, and ``ceil(kh * nk)`` on a float32 ``kh`` disagrees with the reference's
float64 rule for some ``nk`` (0.05 * 20), so the block counts are integer arithmetic on the exact fraction
behind ``kh`` and ``kl``. Only ``scale`` is read from the node (an attribute reference). A model therefore
holds one SLA option set: onnxruntime ignores ONNX function overloads, which would be needed for two.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lite3r.plugins import contract
from lite3r.sla.reference import LINEAR_EPS, check_options

DOMAIN = contract.NAMESPACE
SLA_OP = "SparseLinearAttention"
CORE_OP = contract.CORE_OP
SLA_INPUTS = ("q", "k", "v", "proj_lin_weight", "proj_lin_bias")
CORE_INPUTS = ("q", "k", "v", "proj_w", "proj_b", "lut", "kv_state", "k_state")
SLA_ATTRIBUTES = {  # name -> ONNX attribute type
    "kh": "FLOAT", "kl": "FLOAT", "block_q": "INT", "block_k": "INT", "feature_map": "STRING", "scale": "FLOAT",
    "plugin_namespace": "STRING",
}  # fmt: skip
CORE_ATTRIBUTES = ("block_q", "block_k", "feature_map", "scale", "plugin_namespace")
# Element types by the contract's (Triton) names; a graph's precision uses the same names.
ONNX_TYPES = {"fp32": TensorProto.FLOAT, "bf16": TensorProto.BFLOAT16, "fp16": TensorProto.FLOAT16,
              "i32": TensorProto.INT32}  # fmt: skip
# The counts' integer rule is checked against reference.block_counts for every key-block count up to this
# (2**20 blocks of 64 tokens: 67 M tokens, far beyond any sequence SLA runs on).
_CHECKED_BLOCKS = 1 << 20
_MAX_DENOMINATOR = 1 << 20


class SLAExportError(ValueError):
    """SLA options that cannot be written as an exact ONNX function."""


class SLAOptions(NamedTuple):
    """The options of one ``SparseLinearAttention`` core, with ``kh`` and ``kl`` exactly as in PyTorch."""

    kh: float
    kl: float
    block_q: int
    block_k: int
    feature_map: str

    def node_attributes(self, head_dim: int) -> dict:
        return {
            "kh": self.kh, "kl": self.kl, "block_q": self.block_q, "block_k": self.block_k,
            "feature_map": self.feature_map, "scale": head_dim**-0.5, "plugin_namespace": DOMAIN,
        }  # fmt: skip


def sla_node(inputs, output: str, options: SLAOptions, head_dim: int, name: str = "") -> onnx.NodeProto:
    """One ``lite3r::SparseLinearAttention`` node with the contract's attributes."""
    return helper.make_node(SLA_OP, list(inputs), [output], name=name or None, domain=DOMAIN,
                            **options.node_attributes(head_dim))  # fmt: skip


def sla_functions(
    options: SLAOptions, opset: int = 21, *, precision: str = "fp32", plugin: bool = False
) -> list[onnx.FunctionProto]:
    """The two model-local functions that define ``SparseLinearAttention`` for ``options`` in a graph whose q, k, v
    are ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``). The core node gets the plugin's input types (the
    marginal ``kv_state`` in the plugin's state dtype for ``precision``, float32 in a float32 graph), and
    ``plugin_namespace`` only when ``plugin`` is true (``plugin_unsupported`` says when it cannot be)."""
    check_options(*options)
    if precision not in ("fp32", *contract.IO_DTYPES):
        raise ValueError(f"precision must be fp32 or one of {contract.IO_DTYPES}; got {precision!r}")
    if plugin and precision not in contract.IO_DTYPES:
        raise ValueError(f"the SLA plugin takes {contract.IO_DTYPES} q, k, v; got {precision}")
    body = _sla_body(options, ONNX_TYPES[contract.STATE_DTYPES.get(precision, "fp32")], plugin)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)]
    return [
        helper.make_function(
            DOMAIN, SLA_OP, SLA_INPUTS, ["out"], body, imports, list(SLA_ATTRIBUTES),
            doc_string="SLA: block map and marginal key states, then the core.",
        ),
        helper.make_function(
            DOMAIN, CORE_OP, CORE_INPUTS, ["out"], _core_body(options), imports, list(CORE_ATTRIBUTES),
            doc_string="SLA core: softmax over critical blocks + proj_lin(linear).",
        ),
    ]


def plugin_unsupported(precision: str, head_dims) -> str | None:
    """Why the TensorRT plugin cannot run the SLA cores of a ``precision`` graph with these head dims, or None."""
    reasons = {contract.unsupported(precision, dim) for dim in head_dims} - {None}
    return "; ".join(sorted(reasons)) or None


def count_fractions(kh: float, kl: float) -> tuple[Fraction, Fraction]:
    """``kh`` and ``kl`` as fractions ``p/q`` for which ``min(nk, max(1, ceil(p*nk/q)))`` and
    ``min(nk - n_critical, floor(p*nk/q))`` equal ``reference.block_counts`` (checked for every ``nk``)."""
    fractions = Fraction(kh).limit_denominator(_MAX_DENOMINATOR), Fraction(kl).limit_denominator(_MAX_DENOMINATOR)
    nk = np.arange(1, _CHECKED_BLOCKS + 1, dtype=np.int64)
    critical, negligible = integer_counts(nk, *fractions)
    # reference.block_counts, vectorised: numpy's float64 arithmetic is Python's, operation for operation (a
    # test holds the two together).
    expected_critical = np.minimum(nk, np.maximum(1, np.ceil(kh * nk - 1e-9).astype(np.int64)))
    expected_negligible = np.minimum(nk - expected_critical, np.floor(kl * nk + 1e-9).astype(np.int64))
    bad = np.flatnonzero((critical != expected_critical) | (negligible != expected_negligible))
    if bad.size:
        raise SLAExportError(
            f"SLA kh={kh!r}, kl={kl!r} have no exact small fraction (block counts differ at {nk[bad[0]]} key "
            "blocks); use values such as 0.05 or 0.125"
        )
    return fractions


def integer_counts(nk: np.ndarray, kh: Fraction, kl: Fraction) -> tuple[np.ndarray, np.ndarray]:
    critical = np.minimum(nk, np.maximum(1, (nk * kh.numerator + kh.denominator - 1) // kh.denominator))
    return critical, np.minimum(nk - critical, nk * kl.numerator // kl.denominator)


class _Body:
    """Appends nodes to a function body; every value gets a fresh local name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._constants: dict[tuple, str] = {}

    def __call__(self, op_type: str, *inputs: str, outputs: int = 1, name: str = "", **attrs):
        prefix = name or f"t{len(self.nodes)}_{op_type}"
        names = [prefix] if outputs == 1 else [f"{prefix}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def ints(self, *values: int) -> str:
        """An int64 constant of shape ``[len(values)]``, created once."""
        return self._constant(np.array(values, dtype=np.int64))

    def scalar(self, value, dtype=np.float32) -> str:
        return self._constant(np.array(value, dtype=dtype))

    def _constant(self, array: np.ndarray) -> str:
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self("Constant", value=numpy_helper.from_array(array))
        return self._constants[key]

    def ref_float(self, attribute: str) -> str:
        """A float constant taken from the calling node's attribute (attribute reference)."""
        ref = helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT)
        ref.ref_attr_name = attribute
        node = helper.make_node("Constant", [], [f"attr_{attribute}"])
        node.attribute.append(ref)
        self.nodes.append(node)
        return node.output[0]


class _Shapes(NamedTuple):
    """Dynamic sizes of ``[B, H, L, D]`` inputs as int64 ``[1]`` tensors (``lead`` = ``[B, H]``)."""

    lead: str
    length: str
    dim: str

    @classmethod
    def of(cls, b: _Body, x: str) -> _Shapes:
        return cls(b("Shape", x, start=0, end=2), b("Shape", x, start=2, end=3), b("Shape", x, start=3, end=4))

    def num_blocks(self, b: _Body, block: int) -> str:
        return b("Div", b("Add", self.length, b.ints(block - 1)), b.ints(block))


def _blocks(b: _Body, x: str, s: _Shapes, n: str, block: int, *, flat: bool = False) -> str:
    """``[B, H, L, D]`` -> ``[B, H, n, block, D]`` (or ``[B, H, n, block*D]``), zero-padded at the end."""
    pad = b("Sub", b("Mul", n, b.ints(block)), s.length)
    padded = b("Pad", x, b("Concat", b.ints(0, 0, 0, 0, 0, 0), pad, b.ints(0), axis=0))
    shape = (s.lead, n, b.ints(-1)) if flat else (s.lead, n, b.ints(block), s.dim)
    return b("Reshape", padded, b("Concat", *shape, axis=0))


def _pool(b: _Body, x: str, s: _Shapes, n: str, block: int) -> str:
    """Mean of each block; a short last block averages its real tokens only (``reference.pool_blocks``)."""
    sums = b("ReduceSum", _blocks(b, x, s, n, block), b.ints(3), keepdims=0)
    starts = b("Mul", b("Range", b.scalar(0, np.int64), b("Squeeze", n), b.scalar(1, np.int64)), b.ints(block))
    counts = b("Min", b("Sub", s.length, starts), b.ints(block))
    return b("Div", sums, b("Unsqueeze", b("Cast", counts, to=TensorProto.FLOAT), b.ints(1)))


def _merge_lead(b: _Body, x: str) -> str:
    """``[B, H, ...]`` -> ``[B*H, ...]``, the plugin's layout of the marginal states."""
    return b("Reshape", x, b("Concat", b.ints(-1), b("Shape", x, start=2), axis=0))


def _feature_map(b: _Body, x: str, name: str) -> str:
    if name == "softmax":
        return b("Softmax", x, axis=-1)
    if name == "elu":
        return b("Add", b("Elu", x, alpha=1.0), b.scalar(1.0))
    return b("Relu", x)


def _sla_body(o: SLAOptions, state_type: int, plugin: bool) -> list[onnx.NodeProto]:
    b = _Body()
    kh, kl = count_fractions(o.kh, o.kl)
    q, k, v = (b("Cast", x, to=TensorProto.FLOAT, name=f"{x}32") for x in ("q", "k", "v"))
    s = _Shapes.of(b, q)
    nq, nk = s.num_blocks(b, o.block_q), s.num_blocks(b, o.block_k)

    # Block map: rank key blocks by the logits of P, pool(q) pool(k)^T / sqrt(D) (reference.block_scores).
    pooled_k = b("Transpose", _pool(b, k, s, nk, o.block_k), perm=[0, 1, 3, 2])
    scores = b("MatMul", _pool(b, q, s, nq, o.block_q), pooled_k)
    scores = b("Div", scores, b("Sqrt", b("Cast", s.dim, to=TensorProto.FLOAT)))
    # count_fractions: n_critical = min(nk, max(1, ceil(nk * kh))), n_negligible = min(nk - n_critical, floor(nk * kl))
    ceil_kh = b("Div", b("Add", b("Mul", nk, b.ints(kh.numerator)), b.ints(kh.denominator - 1)), b.ints(kh.denominator))
    n_critical = b("Min", nk, b("Max", b.ints(1), ceil_kh))
    floor_kl = b("Div", b("Mul", nk, b.ints(kl.numerator)), b.ints(kl.denominator))
    n_negligible = b("Min", b("Sub", nk, n_critical), floor_kl)
    # TopK ranks ties by the lower key-block index first: the reference's rule (reference.classify_blocks).
    _, order = b("TopK", scores, nk, axis=-1, largest=1, sorted=1, outputs=2, name="order")
    rank = b("Range", b.scalar(0, np.int64), b("Squeeze", nk), b.scalar(1, np.int64))
    is_marginal = b("And", b("GreaterOrEqual", rank, n_critical), b("Less", rank, b("Sub", nk, n_negligible)))
    by_rank = b("Expand", b("Cast", is_marginal, to=TensorProto.FLOAT), b("Shape", order))
    marginal = b("ScatterElements", b("ConstantOfShape", b("Shape", scores)), order, by_rank, axis=-1, name="marginal")
    critical = b("Slice", order, b.ints(0), n_critical, b.ints(-1))
    ascending, _ = b("TopK", critical, n_critical, axis=-1, largest=0, sorted=1, outputs=2)
    lut = b("Cast", ascending, to=TensorProto.INT32, name="lut")

    # Marginal key states: S_j = phi(K_j)^T V_j and z_j = sum phi(K_j) per key block, summed over the map.
    phi_k = _blocks(b, _feature_map(b, k, o.feature_map), s, nk, o.block_k)
    per_block_kv = b("MatMul", b("Transpose", phi_k, perm=[0, 1, 2, 4, 3]), _blocks(b, v, s, nk, o.block_k))
    per_block_kv = b("Reshape", per_block_kv, b("Concat", s.lead, nk, b.ints(-1), axis=0))
    per_block_k = b("ReduceSum", phi_k, b.ints(3), keepdims=0)
    kv_state, k_state = (_merge_lead(b, b("MatMul", marginal, x)) for x in (per_block_kv, per_block_k))
    kv_state = b("Cast", kv_state, to=state_type)  # the plugin's state dtype (bf16 for bf16 q, k, v)
    proj_w, proj_b = (b("Cast", x, to=TensorProto.FLOAT) for x in ("proj_lin_weight", "proj_lin_bias"))

    core = helper.make_node(
        CORE_OP, ["q", "k", "v", proj_w, proj_b, lut, kv_state, k_state], ["out"], domain=DOMAIN,
        block_q=o.block_q, block_k=o.block_k, feature_map=o.feature_map,
        **({"plugin_namespace": DOMAIN} if plugin else {}),
    )  # fmt: skip
    scale = helper.make_attribute_ref("scale", onnx.AttributeProto.FLOAT)
    core.attribute.append(scale)
    return [*b.nodes, core]


def _core_body(o: SLAOptions) -> list[onnx.NodeProto]:
    b = _Body()
    q, k, v = (b("CastLike", x, "k_state", name=f"{x}32") for x in ("q", "k", "v"))
    s = _Shapes.of(b, q)
    nq, nk = s.num_blocks(b, o.block_q), s.num_blocks(b, o.block_k)

    # O_s: softmax attention of each query block over the keys of its critical blocks (padding keys masked).
    lut = b("Unsqueeze", b("Cast", "lut", to=TensorProto.INT64), b.ints(-1))  # [B, H, nq, nc, 1]
    gathered_shape = b("Concat", s.lead, nq, b.ints(-1), s.dim, axis=0)
    keys, values = (
        b("Reshape", b("GatherND", _blocks(b, x, s, nk, o.block_k, flat=True), lut, batch_dims=2), gathered_shape)
        for x in (k, v)
    )
    q_blocks = _blocks(b, q, s, nq, o.block_q)
    scores = b("Mul", b("MatMul", q_blocks, b("Transpose", keys, perm=[0, 1, 2, 4, 3])), b.ref_float("scale"))
    in_block = b("Range", b.scalar(0, np.int64), b.scalar(o.block_k, np.int64), b.scalar(1, np.int64))
    key_pos = b("Add", b("Mul", lut, b.ints(o.block_k)), in_block)
    key_pos = b("Reshape", key_pos, b("Concat", s.lead, nq, b.ints(1, -1), axis=0))
    scores = b("Where", b("Less", key_pos, s.length), scores, b.scalar(-np.inf))
    sparse = b("MatMul", b("Softmax", scores, axis=-1), values)

    # O_l = phi(q) M / (phi(q) . z + eps) with the query block's marginal states, then proj_lin.
    phi_q = _blocks(b, _feature_map(b, q, o.feature_map), s, nq, o.block_q)
    kv_state = b("Reshape", "kv_state", b("Concat", s.lead, nq, s.dim, s.dim, axis=0))
    k_state = b("Reshape", "k_state", b("Concat", s.lead, nq, b.ints(1), s.dim, axis=0))
    numerator = b("MatMul", phi_q, b("CastLike", kv_state, "k_state"))
    denominator = b("Add", b("ReduceSum", b("Mul", phi_q, k_state), b.ints(-1), keepdims=1), b.scalar(LINEAR_EPS))
    weight = b("Transpose", b("CastLike", "proj_w", "k_state"), perm=[1, 0])
    linear = b("Add", b("MatMul", b("Div", numerator, denominator), weight), b("CastLike", "proj_b", "k_state"))

    out = b("Reshape", b("Add", sparse, linear), b("Concat", s.lead, b.ints(-1), s.dim, axis=0))
    out = b("Slice", out, b.ints(0), s.length, b.ints(2))
    b("CastLike", out, "q", name="out")
    return b.nodes
