"""``distill``: train an SLA student's ``proj_lin`` to reproduce a frozen dense teacher, optionally through
FP8 fake quantizers (QAT).

One step = one scene: the teacher and the student see the same views, the losses of
:mod:`lite3r.distill.losses` compare them, and AdamW updates ``proj_lin`` under a warmup + cosine schedule
with gradient clipping. With ``fp8_qat`` the student is first quantized with ModelOpt and calibrated on a
few scenes; training then runs through the fake quantizers (straight-through gradients), so ``proj_lin``
learns to absorb the FP8 error of the layers around it as well as the SLA error.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from lite3r.calibration.fp8 import autocast, calibrate_fp8
from lite3r.data.datasets import item_images
from lite3r.data.synthetic import Scene, SyntheticScenes
from lite3r.distill.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, save_student, trainable_state
from lite3r.distill.losses import AttentionTaps, LossWeights, distillation_losses, sla_layer_names
from lite3r.models import family_of
from lite3r.quant import FP8Recipe

LOG = "log.jsonl"


class DistillError(ValueError):
    """Distillation cannot start or continue (wrong student, diverged loss, unusable checkpoint)."""


@dataclass(frozen=True)
class DistillConfig:
    """Options with their defaults; see ``docs/distill_fp8.md`` for why these values."""

    lr: float = 5e-3  # proj_lin starts at zero; AdamW moves each weight by about lr per step
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # of the steps, at least one step
    min_lr_fraction: float = 0.1  # the cosine ends at lr * min_lr_fraction
    grad_clip: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights)
    calibration_batches: int = 4
    bf16: bool = True  # autocast on CUDA; CPU runs in float32
    grad_checkpointing: bool = False
    shuffle: bool = True  # a seeded permutation of the data per epoch
    seed: int = 0
    checkpoint_every: int = 50

    def lr_at(self, step: int, steps: int) -> float:
        warmup = max(1, round(self.warmup_fraction * steps))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_fraction + (1 - self.min_lr_fraction) * cosine)


@dataclass
class DistillResult:
    student: nn.Module = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)  # one record per step run in this call (the log's lines)
    files: list[Path]
    peak_memory_bytes: int | None  # CUDA only

    def __str__(self) -> str:
        if not self.history:
            return "no steps run (the checkpoint was already complete)"
        first, last = self.history[0], self.history[-1]
        return f"loss {first['loss']:.4g} (step {first['step']}) -> {last['loss']:.4g} (step {last['step']})"


def default_data(teacher: nn.Module, num_views: int = 2, num_scenes: int = 8, seed: int = 0) -> list[Scene]:
    """The embedded default: ``num_scenes`` synthetic scenes at the model's image size, rendered once."""
    size = family_of(teacher).image_size
    return list(SyntheticScenes(num_scenes, num_views, size, size, seed))


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: Iterable[Any] | None = None,
    steps: int = 100,
    *,
    fp8_qat: bool = True,
    config: DistillConfig | None = None,
    recipe: FP8Recipe | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = False,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` (from ``lite3r.convert_to_sla(teacher)``) for ``steps`` steps.

    ``data`` yields scenes or image tensors (see :func:`lite3r.data.datasets.item_images`); None means
    :func:`default_data`. With ``out_dir``, every step is appended to ``log.jsonl``, a resumable
    ``checkpoint.pt`` is written every ``config.checkpoint_every`` steps and at the end, and the trained
    student is saved as ``student.safetensors`` (+ ``quant_state.json`` with ``fp8_qat``); with ``resume``
    an existing checkpoint there is continued. The student is trained in place and returned in the result.
    """
    config = config or DistillConfig()
    if steps < 1:
        raise DistillError(f"steps must be at least 1, got {steps}")
    params = _check_student(teacher, student)
    device = params[0].device
    teacher.to(device).eval().requires_grad_(False)
    data = default_data(teacher, seed=config.seed) if data is None else data
    torch.manual_seed(config.seed)

    out = Path(out_dir) if out_dir is not None else None
    checkpoint = _existing_checkpoint(out, resume)
    if fp8_qat:
        _quantize(student, data, recipe, config, checkpoint)
        _check_student(teacher, student)  # quantization must not have made anything else trainable
    elif checkpoint is not None and checkpoint.get("quant_state") is not None:
        raise DistillError(f"{out / CHECKPOINT} was trained with fp8_qat; resume it with fp8_qat=True")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if checkpoint is not None:
        start = _restore(checkpoint, student, optimizer, steps)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(out / LOG, start)

    if config.grad_checkpointing and not hasattr(student, "set_grad_checkpointing"):
        raise DistillError(f"grad_checkpointing needs a model with set_grad_checkpointing ({type(student).__name__})")
    names = sla_layer_names(student)
    taps = AttentionTaps(teacher, names), AttentionTaps(student, names)
    student.train()
    if config.grad_checkpointing:
        student.set_grad_checkpointing(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history: list[dict[str, Any]] = []
    try:
        with _progress_bar(progress, steps, start) as advance:
            for step, item in zip(range(start, steps), _items(data, start, config)):
                record = _step(teacher, student, item, taps, optimizer, params, config, step, steps, device)
                history.append(record)
                if out is not None:
                    with open(out / LOG, "a") as log:
                        log.write(json.dumps(record) + "\n")
                    if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
                        _save(out, student, optimizer, config, step + 1, fp8_qat)
                advance(record)
    finally:
        for tap in taps:
            tap.remove()
        if config.grad_checkpointing:
            student.set_grad_checkpointing(False)
        student.eval()
    files = save_student(student, out) if out is not None else []
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return DistillResult(student, history, [*files, *([out / CHECKPOINT, out / LOG] if out else [])], peak)


def _step(teacher, student, item, taps, optimizer, params, config, step, steps, device) -> dict[str, Any]:
    started = time.perf_counter()
    lr = config.lr_at(step, steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = item_images(item).to(device)
    teacher_taps, student_taps = taps
    with torch.no_grad(), autocast(device, config.bf16), teacher_taps.record() as teacher_attention:
        teacher_out = teacher(images)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, config.bf16), student_taps.record() as student_attention:
        student_out = student(images)
    scene = item if isinstance(item, Scene) else None
    loss, terms = distillation_losses(
        student_out, teacher_out, student_attention, teacher_attention, config.weights, family_of(teacher), scene
    )
    if not torch.isfinite(loss):
        raise DistillError(f"the loss became {loss.item()} at step {step}; lower the learning rate ({config.lr})")
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "step": step,
        "loss": loss.item(),
        **terms,
        "lr": lr,
        "grad_norm": grad_norm.item(),
        "time_s": time.perf_counter() - started,
    }


def _check_student(teacher: nn.Module, student: nn.Module) -> list[nn.Parameter]:
    """The student's trainable parameters, which must be exactly its SLA ``proj_lin`` weights."""
    if student is teacher:
        raise DistillError("the student is the teacher; build it with lite3r.convert_to_sla(teacher)")
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise DistillError("the student has no trainable parameters; build it with lite3r.convert_to_sla(teacher)")
    others = [n for n, _ in trainable if ".proj_lin." not in f".{n}"]
    if others:
        raise DistillError(
            f"only SLA proj_lin may be trained, but {len(others)} other parameters are ({others[0]}, ...)"
        )
    return [p for _, p in trainable]


def _quantize(student, data, recipe, config, checkpoint) -> None:
    if checkpoint is not None and checkpoint.get("quant_state") is not None:
        from lite3r.calibration.state import apply_quant_state

        apply_quant_state(student, checkpoint["quant_state"])  # the exact scales training used
    elif checkpoint is not None:
        raise DistillError("the checkpoint was trained without fp8_qat; resume it with fp8_qat=False")
    else:
        calibrate_fp8(student, data, recipe=recipe, num_batches=config.calibration_batches, bf16=config.bf16)


def _existing_checkpoint(out: Path | None, resume: bool) -> dict[str, Any] | None:
    if out is None or not resume or not (out / CHECKPOINT).is_file():
        return None
    return load_checkpoint(out / CHECKPOINT)


def _restore(checkpoint: dict[str, Any], student: nn.Module, optimizer, steps: int) -> int:
    expected = set(trainable_state(student))
    if set(checkpoint["proj_lin"]) != expected:
        raise DistillError("the checkpoint's proj_lin tensors do not match this student (other model or SLA layers?)")
    if checkpoint["step"] > steps:
        raise DistillError(f"the checkpoint is at step {checkpoint['step']}, beyond steps={steps}")
    student.load_state_dict(checkpoint["proj_lin"], strict=False)
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    return checkpoint["step"]


def _save(out: Path, student, optimizer, config: DistillConfig, step: int, fp8_qat: bool) -> None:
    quant = None
    if fp8_qat:
        from lite3r.calibration.state import quant_state

        quant = quant_state(student)
    state = {
        "step": step,
        "proj_lin": trainable_state(student),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "config": json.dumps(asdict(config)),
        "quant_state": quant,
    }
    save_checkpoint(out / CHECKPOINT, state)


def _truncate_log(path: Path, start: int) -> None:
    """Keep the log lines of the steps before ``start`` (a crash may have logged steps after the checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] < start]
    path.write_text("".join(line + "\n" for line in kept))


def _items(data: Iterable[Any], start: int, config: DistillConfig) -> Iterator[Any]:
    """Data items from step ``start`` on, cycling; a sized dataset is visited in a seeded order per epoch."""
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
        if n == 0:
            raise DistillError("the training data is empty")
        for step in count(start):
            epoch, i = divmod(step, n)
            if config.shuffle:
                i = int(torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))[i])
            yield data[i]
        return
    seen = 0
    while True:
        before = seen
        for item in data:
            if seen >= start:
                yield item
            seen += 1
        if seen == before:
            raise DistillError("the training data is empty (or a one-shot iterator that ran out)")


class _progress_bar:
    """A rich progress bar showing the loss terms, or nothing when disabled."""

    def __init__(self, enabled: bool, steps: int, start: int) -> None:
        self.enabled, self.steps, self.start = enabled, steps, start

    def __enter__(self):
        if not self.enabled:
            return lambda record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("distill"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[terms]}"),
        )
        self.bar.start()
        task = self.bar.add_task("distill", total=self.steps, completed=self.start, terms="")

        def advance(record: dict[str, Any]) -> None:
            shown = {k: v for k, v in record.items() if k not in ("step", "lr", "grad_norm", "time_s")}
            self.bar.update(task, advance=1, terms=" ".join(f"{k}={v:.4g}" for k, v in shown.items()))

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
