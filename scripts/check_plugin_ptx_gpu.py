"""Launch the SLA plugin's ahead-of-time PTX exactly as TensorRT would, and check its output (needs a CUDA GPU).

TensorRT's AOT plugin loads the PTX with the CUDA driver and passes ``(inputs..., int32 extra arguments...,
outputs..., null for Triton's hidden scratch pointers)``. This script does the same through ``libcuda``
(``cuModuleLoadData`` + ``cuLaunchKernel``) with ``lite3r.plugins.compile_sla_kernel``'s argument list and the
plugin's own grid and extra-argument functions, on random inputs, then compares the output with

* the same kernel launched by Triton's JIT on the same inputs (``lite3r.sla.kernels.launch_forward``): same
  code, so it must agree within the bound below;
* the PyTorch reference (``lite3r.sla.reference``) on the same block map, with the rule of the SLA kernel
  tests: error <= 2 x (error of the reference computed in the input dtype) + eps(dtype) x max |output|.

Exit status 0 when both hold. ``--compile-only`` stops after compiling (works on a CPU).

    PYTHONPATH=src python scripts/check_plugin_ptx_gpu.py [--dtype bf16] [--seq-len 2000] [--head-dim 64]
"""

from __future__ import annotations

import argparse
import ctypes
import sys

import torch
import triton

from lite3r.plugins.sla_kernel import EXTRA_ARGS, compile_sla_kernel, extra_args, grid
from lite3r.sla import kernels, reference

CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
STATIC_SHARED_LIMIT = 48 * 1024


class Driver:
    """The few CUDA driver calls TensorRT makes to run an AOT plugin kernel."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, status: int, what: str) -> None:
        if status == 0:
            return
        text = ctypes.c_char_p()
        self.lib.cuGetErrorString(status, ctypes.byref(text))
        old_driver = status == CUDA_ERROR_UNSUPPORTED_PTX_VERSION
        hint = " (driver older than the PTX ISA: pass --ptx-version, e.g. 84)" if old_driver else ""
        raise RuntimeError(f"{what} failed: CUDA error {status} {text.value.decode() if text.value else ''}{hint}")

    def load(self, ptx: str, name: str, shared_mem: int) -> ctypes.c_void_p:
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.cuModuleLoadData(ctypes.byref(module), ptx.encode() + b"\0"), "cuModuleLoadData")
        self.check(self.lib.cuModuleGetFunction(ctypes.byref(function), module, name.encode()), "cuModuleGetFunction")
        if shared_mem > STATIC_SHARED_LIMIT:
            attribute = CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            self.check(self.lib.cuFuncSetAttribute(function, attribute, shared_mem), "cuFuncSetAttribute")
        return function

    def launch(self, function, grid_xy, block_x: int, shared_mem: int, args: list) -> None:
        params = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        gx, gy = (ctypes.c_uint(int(g)) for g in grid_xy)
        self.check(
            self.lib.cuLaunchKernel(function, gx, gy, ctypes.c_uint(1), ctypes.c_uint(block_x), ctypes.c_uint(1),
                                    ctypes.c_uint(1), ctypes.c_uint(shared_mem), stream, params, None),
            "cuLaunchKernel",
        )  # fmt: skip


def plugin_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random q, k, v and proj_lin, the block map, and the marginal key states: the plugin op's inputs."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, args.heads, args.seq_len, args.head_dim)
    q, k, v = (torch.randn(shape, device="cuda", generator=gen).to(dtype) for _ in range(3))
    weight = torch.randn(args.head_dim, args.head_dim, device="cuda", generator=gen) * args.head_dim**-0.5
    bias = torch.randn(args.head_dim, device="cuda", generator=gen) * 0.1
    pre = kernels.precompute(q, k, v, args.kh, args.kl, args.block_q, args.block_k, args.feature_map)
    return {
        "q": q, "k": k, "v": v, "proj_w": weight, "proj_b": bias, "lut": pre.blocks.critical.contiguous(),
        "kv_state": pre.kv_state.contiguous(), "k_state": pre.k_state.contiguous(), "blocks": pre.blocks, "pre": pre,
    }  # fmt: skip


def launch_like_tensorrt(kernel, tensors: dict[str, torch.Tensor], block_q: int) -> torch.Tensor:
    out = torch.empty_like(tensors["q"])
    scalars = dict(zip(EXTRA_ARGS, extra_args(tuple(tensors["q"].shape), tuple(tensors["lut"].shape))))
    values = []
    for arg in kernel.args:
        if arg.kind == "ptr":
            values.append(ctypes.c_uint64((out if arg.name == "out" else tensors[arg.name]).data_ptr()))
        elif arg.kind == "i32":
            values.append(ctypes.c_int32(int(scalars[arg.name])))
        else:
            values.append(ctypes.c_uint64(0))  # TensorRT passes null for parameters it was not given
    driver = Driver()
    function = driver.load(kernel.ptx, kernel.name, kernel.shared_mem)
    driver.launch(function, grid(tuple(out.shape), block_q), kernel.block_x, kernel.shared_mem, values)
    torch.cuda.synchronize()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2000, help="tokens; not a multiple of the block size on purpose")
    parser.add_argument("--block-q", type=int, default=64)
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--kh", type=float, default=0.05)
    parser.add_argument("--kl", type=float, default=0.10)
    parser.add_argument("--feature-map", default="softmax", choices=reference.FEATURE_MAPS)
    parser.add_argument("--ptx-version", type=int, help="cap the PTX ISA (e.g. 84) for an older driver")
    parser.add_argument("--target", help="compute capability to compile for, e.g. sm_90 (default: this GPU)")
    parser.add_argument("--compile-only", action="store_true", help="compile and print the launch ABI, no GPU needed")
    args = parser.parse_args()

    target = args.target or "sm_{}{}".format(*torch.cuda.get_device_capability())
    kernel = compile_sla_kernel(args.dtype, args.head_dim, args.block_q, args.block_k, feature_map=args.feature_map,
                                target=target, ptx_version=args.ptx_version)  # fmt: skip
    print(f"triton {triton.__version__}, torch {torch.__version__}, target {kernel.target}")
    print(f"kernel {kernel.name}: {len(kernel.ptx)} B of PTX, {kernel.num_warps} warps, {kernel.shared_mem} B shared")
    print("launch arguments: " + ", ".join(f"{a.name}:{a.kind}" for a in kernel.args))
    if args.compile_only:
        return 0

    print(f"device {torch.cuda.get_device_name()}")
    tensors = plugin_inputs(args)
    blocks = tensors["blocks"]
    aot = launch_like_tensorrt(kernel, tensors, args.block_q)
    inputs = [tensors[name] for name in ("q", "k", "v", "proj_w", "proj_b")]
    jit = kernels.launch_forward(*inputs, tensors["pre"], args.block_q, args.block_k, args.feature_map)
    options = dict(kh=args.kh, kl=args.kl, block_q=args.block_q, block_k=args.block_k, feature_map=args.feature_map,
                   blocks=blocks)  # fmt: skip
    qkv_wb = [tensors[n] for n in ("q", "k", "v", "proj_w", "proj_b")]
    exact = reference.sparse_linear_attention_reference(*qkv_wb, **options, compute_dtype=torch.float32).float()
    low = reference.sparse_linear_attention_reference(*qkv_wb, **options, compute_dtype=tensors["q"].dtype).float()

    vs_jit = (aot.float() - jit.float()).abs().max().item()
    error, baseline = (aot.float() - exact).abs().max().item(), (low - exact).abs().max().item()
    limit = 2 * baseline + torch.finfo(aot.dtype).eps * exact.abs().max().item()
    finite = bool(torch.isfinite(aot).all())
    print(f"critical blocks per query block: {blocks.critical.shape[-1]} of {blocks.classes.shape[-1]}")
    print(f"max |AOT - JIT|       = {vs_jit:.3g}")
    print(f"max |AOT - reference| = {error:.3g} (limit {limit:.3g}; reference in {args.dtype}: {baseline:.3g})")
    passed = finite and vs_jit <= limit and error <= limit
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
