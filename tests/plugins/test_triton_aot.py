"""Triton ahead-of-time compilation for the TensorRT plugin, on a CPU: the PTX ``.entry`` parameter list must be
exactly what the plugin launch passes (inputs, int32 extra arguments, outputs, then null for Triton's hidden
scratch pointers)."""

from __future__ import annotations

import re

import pytest
import triton
import triton.language as tl

from lite3r.plugins import compile_sla_kernel
from lite3r.plugins.sla_kernel import EXTRA_ARGS, INPUTS, extra_args, grid
from lite3r.plugins.triton_aot import KernelAbiError, KernelArg, compile_for_plugin, entry_param_types, parse_target


@triton.jit
def scale_rows(x, n, out, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """Toy plugin kernel in TensorRT's calling convention: input pointer, int32 extra argument, output."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offsets < n
    tl.store(out + offsets, tl.load(x + offsets, mask=keep) * SCALE, mask=keep)


TOY_ARGS = (KernelArg("x", "ptr"), KernelArg("n", "i32"), KernelArg("out", "ptr"))


def _ptx_param_count(ptx: str, name: str) -> int:
    header = re.search(rf"\.entry {name}\((.*?)\)", ptx, flags=re.S).group(1)
    return header.count(".param")


def test_toy_kernel_launch_list_matches_its_ptx():
    kernel = compile_for_plugin(scale_rows, TOY_ARGS, {"x": "fp16", "out": "fp16"}, {"SCALE": 2.0, "BLOCK": 128},
                                num_warps=2)  # fmt: skip
    assert kernel.name == "scale_rows" and kernel.target == "sm_90" and kernel.block_x == 64
    assert ".target sm_90" in kernel.ptx
    assert [a.kind for a in kernel.args[:3]] == ["ptr", "i32", "ptr"]
    # Triton appends its scratch pointers after the declared parameters; TensorRT passes null for them.
    assert [a.kind for a in kernel.args[3:]] and all(a.kind == "null" for a in kernel.args[3:])
    assert _ptx_param_count(kernel.ptx, kernel.name) == len(kernel.args)


def test_sla_kernel_ptx_signature_is_the_plugin_launch():
    kernel = compile_sla_kernel("bf16", head_dim=64, block_q=64, block_k=64)

    assert kernel.name == "sparse_linear_attention_core"
    declared = [name for name, _ in INPUTS] + list(EXTRA_ARGS) + ["out"]
    assert [a.name for a in kernel.args[: len(declared)]] == declared
    kinds = [a.kind for a in kernel.args]
    hidden = len(kinds) - len(declared)
    assert kinds == ["ptr"] * len(INPUTS) + ["i32"] * len(EXTRA_ARGS) + ["ptr"] + ["null"] * hidden
    ptx_types = entry_param_types(kernel.ptx, kernel.name)
    assert len(ptx_types) == len(kernel.args)
    assert [t == ".u32" for t in ptx_types] == [k == "i32" for k in kinds]
    assert 0 < kernel.shared_mem <= 227 * 1024 and kernel.block_x == kernel.num_warps * 32


def test_launch_geometry_matches_the_kernel_grid():
    q_shape, lut_shape = (1, 16, 1000, 64), (1, 16, 16, 3)
    assert grid(q_shape, 64) == (16, 16)
    assert extra_args(q_shape, lut_shape) == (16, 1000, 3)


def test_declared_order_must_be_the_tensorrt_order():
    swapped = (KernelArg("x", "ptr"), KernelArg("out", "ptr"), KernelArg("n", "i32"))
    with pytest.raises(KernelAbiError, match=r"declares runtime parameters \['x', 'n', 'out'\]"):
        compile_for_plugin(scale_rows, swapped, {"x": "fp16", "out": "fp16"}, {"SCALE": 2.0, "BLOCK": 128})
    with pytest.raises(KernelAbiError, match=r"no value for constexpr parameter\(s\) \['SCALE'\]"):
        compile_for_plugin(scale_rows, TOY_ARGS, {"x": "fp16", "out": "fp16"}, {"BLOCK": 128})


PTX = """
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2
)
"""


def test_entry_param_types_reads_the_named_entry():
    assert entry_param_types(PTX, "k") == (".u64", ".u32", ".u64")
    with pytest.raises(KernelAbiError, match="no .entry named 'other'"):
        entry_param_types(PTX, "other")


@pytest.mark.parametrize(("target", "cc"), [("sm_90", 90), ("sm90a", 90), ("SM_100", 100), (89, 89), ("120", 120)])
def test_parse_target(target, cc):
    assert parse_target(target) == cc


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "fp32"}, "dtype must be one of"),
        ({"head_dim": 96}, "head_dim must be one of"),
        ({"block_q": 32}, "block sizes must be in"),
        ({"feature_map": "cosine"}, "feature_map must be one of"),
        ({"target": "hopper"}, "not of the form sm_90"),
    ],
)
def test_compile_sla_kernel_rejects_unsupported_configurations(options, message):
    with pytest.raises(ValueError, match=message):
        compile_sla_kernel(**options)


@pytest.mark.tensorrt
def test_register_sla_plugin_with_datacenter_tensorrt():
    import tensorrt as trt

    from lite3r.plugins import PLUGIN_ID, register_sla_plugin

    assert register_sla_plugin() == register_sla_plugin() == PLUGIN_ID == "lite3r::SparseLinearAttentionCore"
    assert trt.get_plugin_registry().get_creator("SparseLinearAttentionCore", "1", "lite3r") is not None


def test_registered_type_combinations_follow_the_contract():
    """TensorRT's type combinations are derived from lite3r.plugins.contract: bf16 I/O pairs with a bf16
    kv_state, fp16 I/O with an fp32 one, position by position."""
    from lite3r.plugins.tensorrt_sla import IO_TYPES

    assert IO_TYPES == "FP16|BF16, FP16|BF16, FP16|BF16, FP32, FP32, INT32, FP32|BF16, FP32, FP16|BF16"
