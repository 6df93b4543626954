"""Ahead-of-time Triton compilation for TensorRT plugins; needs no GPU and no TensorRT.

TensorRT's AOT quickly-deployable plugins launch one PTX kernel with the arguments
``(input pointers..., int32 extra arguments..., output pointers...)`` and pass null for any parameter after
those. Triton (>= 3.3) appends hidden pointer parameters (global scratch, and from 3.5 profile scratch); a
kernel that needs either buffer would then dereference null, so such kernels are refused here. The PTX
``.entry`` parameter list is parsed and checked against the arguments the plugin will pass, so a kernel whose
signature drifts fails on a CPU at compile time instead of producing wrong numbers on the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

ArgKind = Literal["ptr", "i32", "null"]
_PTX_TYPES = {"ptr": (".u64", ".b64", ".s64"), "i32": (".u32", ".s32", ".b32"), "null": (".u64", ".b64", ".s64")}


class KernelAbiError(ValueError):
    """A kernel cannot be launched by a TensorRT AOT plugin with the intended arguments."""


@dataclass(frozen=True)
class KernelArg:
    """One argument the launcher passes: a device pointer, an int32 scalar, or a null pointer."""

    name: str
    kind: ArgKind


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled to PTX together with everything needed to launch it exactly like TensorRT does."""

    name: str
    ptx: str
    args: tuple[KernelArg, ...]  # the launch argument list, hidden null pointers included
    shared_mem: int
    num_warps: int
    target: str

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def parse_target(target: str | int) -> int:
    """``"sm_90"``, ``"sm90a"``, ``"90"`` or ``90`` -> 90."""
    match = re.fullmatch(r"(?:sm_?)?(\d{2,3})a?", str(target).strip().lower())
    if match is None:
        raise ValueError(f"GPU target {target!r} is not of the form sm_90 (compute capability 9.0)")
    return int(match.group(1))


def entry_param_types(ptx: str, kernel_name: str) -> tuple[str, ...]:
    """PTX types (``.u64``, ``.u32``, ...) of the ``.entry`` parameters of ``kernel_name``, in order."""
    match = re.search(rf"\.entry\s+{re.escape(kernel_name)}\s*\((.*?)\)", ptx, flags=re.S)
    if match is None:
        raise KernelAbiError(f"the PTX has no .entry named {kernel_name!r}")
    return tuple(re.findall(r"\.param\s+(\.[a-z]\d+)", match.group(1)))


def _runtime_params(fn: Any) -> list[str]:
    return [p.name for p in fn.params if not p.is_constexpr]


def _check_declaration(fn: Any, args: Sequence[KernelArg], constexprs: Mapping[str, Any]) -> None:
    declared = _runtime_params(fn)
    wanted = [a.name for a in args]
    if declared != wanted:
        raise KernelAbiError(
            f"{fn.__name__} declares runtime parameters {declared}, but the launcher passes {wanted} "
            "(TensorRT's order is inputs, int32 extra arguments, outputs)"
        )
    missing = {p.name for p in fn.params if p.is_constexpr} - set(constexprs)
    if missing:
        raise KernelAbiError(f"{fn.__name__}: no value for constexpr parameter(s) {sorted(missing)}")


def _check_launch_metadata(name: str, metadata: Any) -> None:
    scratch = {f: getattr(metadata, f, 0) for f in ("global_scratch_size", "profile_scratch_size")}
    if any(scratch.values()):
        raise KernelAbiError(f"{name} needs scratch memory {scratch}; a TensorRT plugin launch passes null there")
    if getattr(metadata, "num_ctas", 1) != 1 or getattr(metadata, "launch_cooperative_grid", False):
        raise KernelAbiError(f"{name} needs a clustered or cooperative launch, which TensorRT plugins do not do")


def _launch_args(name: str, args: Sequence[KernelArg], ptx_types: Sequence[str]) -> tuple[KernelArg, ...]:
    """The declared arguments followed by one null pointer per hidden parameter Triton appended."""
    if len(ptx_types) < len(args):
        raise KernelAbiError(f"{name}: the PTX entry has {len(ptx_types)} parameters, fewer than {len(args)}")
    hidden = [KernelArg(f"hidden_{i}", "null") for i in range(len(ptx_types) - len(args))]
    launch = (*args, *hidden)
    for i, (arg, ptx_type) in enumerate(zip(launch, ptx_types)):
        if ptx_type not in _PTX_TYPES[arg.kind]:
            raise KernelAbiError(
                f"{name}: PTX parameter {i} is {ptx_type}, but the launcher passes {arg.kind} {arg.name!r}"
            )
    return launch


def compile_for_plugin(
    fn: Any,
    args: Sequence[KernelArg],
    pointer_dtypes: Mapping[str, str],
    constexprs: Mapping[str, Any],
    *,
    target: str | int = "sm_90",
    num_warps: int = 4,
    num_stages: int = 3,
    ptx_version: int | None = None,
) -> CompiledKernel:
    """Compile ``fn`` (a ``@triton.jit`` function) to PTX for a TensorRT AOT plugin launch with ``args``.

    ``pointer_dtypes`` gives the Triton element type (``"bf16"``, ``"fp32"``, ``"i32"``...) of each pointer
    argument; ``ptx_version`` (e.g. 84 for ISA 8.4) caps the PTX ISA for older drivers.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    _check_declaration(fn, args, constexprs)
    signature = {a.name: (f"*{pointer_dtypes[a.name]}" if a.kind == "ptr" else "i32") for a in args}
    signature.update({name: "constexpr" for name in constexprs})
    options: dict[str, Any] = {"num_warps": num_warps, "num_stages": num_stages}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs))
    compiled = triton.compile(source, target=GPUTarget("cuda", parse_target(target), 32), options=options)
    name = compiled.metadata.name
    _check_launch_metadata(name, compiled.metadata)
    ptx = compiled.asm["ptx"]
    return CompiledKernel(
        name=name,
        ptx=ptx,
        args=_launch_args(name, args, entry_param_types(ptx, name)),
        shared_mem=int(compiled.metadata.shared),
        num_warps=int(compiled.metadata.num_warps),
        target=f"sm_{parse_target(target)}",
    )
