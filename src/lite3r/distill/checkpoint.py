"""What distillation writes: a resumable checkpoint, and the trained student as two small portable files.

- ``checkpoint.pt``: step, global batch size, full (unsharded) ``proj_lin`` tensors and optimizer state keyed
  by parameter name, the config and the quant state (as the plain dict of ``quant_state.json``). Nothing in it
  depends on the number of processes that wrote it, so any number can resume it. Loaded with
  ``weights_only=True``: no pickled code runs.
- ``student.safetensors``: the trained parameters only (everything else is the teacher's), with the SLA
  options in the file's metadata, so :func:`load_student` rebuilds the student from the teacher.
- ``quant_state.json``: the FP8 scales (see :mod:`lite3r.calibration.state`), when the student is quantized.

Every file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r._io import atomic_write_bytes
from lite3r.models._checkpoint import check_finite
from lite3r.sla.module import SparseLinearAttention

CHECKPOINT = "checkpoint.pt"
PROJ_LIN = "student.safetensors"
QUANT_STATE = "quant_state.json"


class StudentFileError(ValueError):
    """A student or checkpoint file that is missing or does not fit the model."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def gather_training_state(student: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The full ``proj_lin`` tensors and optimizer state on the CPU, whether the student is replicated or
    FSDP-sharded. Under a process group every process must call it; rank 0 gets the state, the others
    empty dicts. (Pass the student itself, not its DDP wrapper: they share the parameters.)"""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    model_state = get_model_state_dict(student, options=options)  # also holds buffers: keep the parameters
    proj_lin = {n: t for n, t in model_state.items() if n in trainable}
    return proj_lin, get_optimizer_state_dict(student, optimizer, options=options)


def restore_training_state(
    student: nn.Module, optimizer: torch.optim.Optimizer, proj_lin: dict, optimizer_state: dict
) -> None:
    """Load the full state of :func:`gather_training_state` on every process (each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    set_model_state_dict(student, proj_lin, options=StateDictOptions(full_state_dict=True, strict=False))
    set_optimizer_state_dict(student, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StudentFileError(f"checkpoint not found: {path}") from None


def save_student(
    student: nn.Module, out_dir: str | os.PathLike, *, proj_lin: dict[str, torch.Tensor] | None = None
) -> list[Path]:
    """Write ``student.safetensors`` (and ``quant_state.json`` for an FP8-quantized student) into ``out_dir``.

    ``proj_lin``: the trained tensors when the student's own are sharded (see :func:`gather_training_state`).
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    cores = [m for m in student.modules() if isinstance(m, SparseLinearAttention)]
    if not cores:
        raise StudentFileError("the model has no SLA layer (build the student with lite3r.convert_to_sla)")
    options = {**cores[0].options, "dense_tokens": cores[0].dense_tokens}
    tensors = {n: t.contiguous() for n, t in (trainable_state(student) if proj_lin is None else proj_lin).items()}
    atomic_write_bytes(out_dir / PROJ_LIN, save(tensors, metadata={"sla_options": json.dumps(options)}))
    written = [out_dir / PROJ_LIN]
    if _is_quantized(student):
        from lite3r.calibration.state import save_quant_state

        written.append(save_quant_state(student, out_dir / QUANT_STATE))
    return written


def load_student(teacher: nn.Module, out_dir: str | os.PathLike, *, fp8: bool = True) -> nn.Module:
    """Rebuild a distilled student: ``convert_to_sla(teacher)`` with the saved layers, options and ``proj_lin``,
    then (when ``fp8`` and the folder has one) the FP8 fake quantizers of ``quant_state.json``.

    A folder with only ``quant_state.json`` (``lite3r calibrate`` of the dense model) gives a copy of the dense
    teacher with those quantizers: the FP8 model it describes.
    """
    import copy

    from safetensors import safe_open

    from lite3r.sla import convert_to_sla

    path = Path(out_dir) / PROJ_LIN
    quant_path = Path(out_dir) / QUANT_STATE
    if not path.is_file() and quant_path.is_file():
        from lite3r.calibration.state import load_quant_state

        dense = copy.deepcopy(teacher)
        return load_quant_state(dense, quant_path) if fp8 else dense
    if not path.is_file():
        raise StudentFileError(f"no distilled student in {out_dir} (missing {PROJ_LIN} and {QUANT_STATE})")
    with safe_open(path, framework="pt") as f:
        # A file written before dense_tokens existed holds a plain SLA student: it keeps 0, not the new default.
        options = {"dense_tokens": 0, **json.loads(f.metadata()["sla_options"])}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    try:
        check_finite(tensors, path)
    except ValueError as e:
        raise StudentFileError(str(e)) from None
    layers = {k.rsplit(".core.", 1)[0] for k in tensors}
    student = convert_to_sla(teacher, layers=lambda name, module: name in layers, **options)
    expected = set(trainable_state(student))
    if expected != set(tensors):
        raise StudentFileError(f"{path} holds {len(tensors)} tensors that do not match the student's {len(expected)}")
    student.load_state_dict(tensors, strict=False)
    if fp8 and quant_path.is_file():
        from lite3r.calibration.state import load_quant_state

        load_quant_state(student, quant_path)
    return student


def _is_quantized(model: nn.Module) -> bool:
    if "modelopt.torch.quantization" not in sys.modules:  # never imported: nothing can be quantized
        return False
    from modelopt.torch.quantization.utils import is_quantized

    return is_quantized(model)
