"""``distill``: train an SLA student's ``proj_lin`` to reproduce a frozen dense teacher, optionally through
FP8 fake quantizers (QAT).

One step = ``batch_size`` scenes: for each, the teacher and the student see the same views and the losses of
:mod:`lite3r.distill.losses` compare them; AdamW updates ``proj_lin`` with the batch-mean gradient under a
warmup + cosine schedule with gradient clipping. Under ``torchrun`` the scenes of a step are split over the
processes (see :mod:`lite3r.distill.distributed`). With ``fp8_qat`` the student is first quantized with
ModelOpt and calibrated on a few scenes; training then runs through the fake quantizers (straight-through
gradients), so ``proj_lin`` learns to absorb the FP8 error of the layers around it as well as the SLA error.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from lite3r.calibration.fp8 import autocast, calibrate_fp8
from lite3r.data.datasets import item_images
from lite3r.data.synthetic import Scene, SyntheticScenes
from lite3r.distill.checkpoint import (
    CHECKPOINT,
    gather_training_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    save_student,
    trainable_state,
)
from lite3r.distill.distributed import (
    PARALLEL,
    SceneSampler,
    World,
    all_max,
    all_sum,
    barrier,
    current_world,
    full_tensor,
    gradient_sync,
    parallelize,
    stream_positions,
)
from lite3r.distill.losses import AttentionTaps, LossWeights, distillation_losses, sla_layer_names
from lite3r.distill.teacher_cache import TeacherCache
from lite3r.models import family_of
from lite3r.quant import FP8Recipe

LOG = "log.jsonl"
TERMS = ("loss", *(f.name for f in fields(LossWeights)))  # what a log record averages over a batch


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
    batch_size: int = 1  # scenes per optimizer step, over all processes together
    parallel: str = "ddp"  # under a process group: "ddp" (replicated models) or "fsdp" (FSDP2-sharded)
    teacher_cache: bool = False  # teacher targets computed once into <out_dir>/teacher_cache, read back after
    num_workers: int = 0  # DataLoader processes loading scenes (sized datasets)
    # "proj_lin": only SLA's proj_lin may train (distillation); "all": whatever the student lets train, e.g. every
    # parameter for the full fine-tuning control of benchmarks/bench_teacher.py.
    trainable: str = "proj_lin"

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
    """Distil ``teacher`` into ``student`` (from ``lite3r.convert_to_sla(teacher)``) for ``steps`` optimizer
    steps of ``config.batch_size`` scenes each.

    ``data`` yields scenes or image tensors (see :func:`lite3r.data.datasets.item_images`); None means
    :func:`default_data`. With ``out_dir``, every step is appended to ``log.jsonl``, a resumable
    ``checkpoint.pt`` is written every ``config.checkpoint_every`` steps and at the end, and the trained
    student is saved as ``student.safetensors`` (+ ``quant_state.json`` with ``fp8_qat``); with ``resume``
    an existing checkpoint there is continued. The student is trained in place and returned in the result.

    Inside a ``torch.distributed`` process group (``torchrun``; see :mod:`lite3r.distill.distributed`) every
    process calls this with the same arguments: each computes its share of every batch, and the result is
    that of one process up to float rounding. Rank 0 alone logs, shows progress and writes files. With
    ``config.parallel == "fsdp"`` both models are sharded in place and the returned student is the sharded
    module; its trained tensors are in ``student.safetensors``.
    """
    config = config or DistillConfig()
    if steps < 1:
        raise DistillError(f"steps must be at least 1, got {steps}")
    world = check_config(config)
    params = _check_student(teacher, student, config.trainable)
    device = params[0].device
    teacher.to(device).eval().requires_grad_(False)
    data = default_data(teacher, seed=config.seed) if data is None else data
    torch.manual_seed(config.seed)

    out = Path(out_dir) if out_dir is not None else None
    if config.teacher_cache and (out is None or not _is_sized(data)):
        raise DistillError("teacher_cache needs out_dir and a dataset with len() and indexing (scene ids)")
    checkpoint = _existing_checkpoint(out, resume)
    if checkpoint is not None:
        _check_checkpoint(checkpoint, student, steps, config)
    if fp8_qat:
        _quantize(student, data, recipe, config, checkpoint)
        _check_student(teacher, student, config.trainable)  # quantization must not open other parameters
    elif checkpoint is not None and checkpoint.get("quant_state") is not None:
        raise DistillError(f"{out / CHECKPOINT} was trained with fp8_qat; resume it with fp8_qat=True")
    if config.grad_checkpointing and not hasattr(student, "set_grad_checkpointing"):
        raise DistillError(f"grad_checkpointing needs a model with set_grad_checkpointing ({type(student).__name__})")

    names = sla_layer_names(student)
    taps = AttentionTaps(teacher, names), AttentionTaps(student, names)
    model = parallelize(teacher, student, config.parallel, device)
    params = [p for p in student.parameters() if p.requires_grad]  # FSDP2 replaced them with sharded ones
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if checkpoint is not None:
        restore_training_state(student, optimizer, checkpoint["proj_lin"], checkpoint["optimizer"])
        start = checkpoint["step"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if world.is_main:
            _truncate_log(out / LOG, start)
    loop = _Loop(teacher, student, model, taps, optimizer, params, config, steps, device, world)
    if config.teacher_cache:
        precision = "bfloat16 autocast" if config.bf16 and device.type == "cuda" else "float32"
        manifest = {"scenes": len(data), "layers": names, "precision": precision}
        loop.cache = TeacherCache(out, manifest, fresh=checkpoint is None, world=world)
        loop.fill_cache(data, progress)

    student.train()
    if config.grad_checkpointing:
        student.set_grad_checkpointing(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history: list[dict[str, Any]] = []
    try:
        with _progress_bar(progress and world.is_main, steps, start) as advance:
            for step, batch in zip(range(start, steps), _batches(data, start, steps, config, world)):
                record = loop.step(step, batch)
                history.append(record)
                if out is not None:
                    if world.is_main:
                        with open(out / LOG, "a") as log:
                            log.write(json.dumps(record) + "\n")
                    if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
                        _save(out, student, optimizer, config, step + 1, fp8_qat, world)
                advance(record)
    finally:
        for tap in taps:
            tap.remove()
        if config.grad_checkpointing:
            student.set_grad_checkpointing(False)
        student.eval()
    files = []
    if out is not None:
        proj_lin, _ = gather_training_state(student, optimizer)
        if world.is_main:
            files = [*save_student(student, out, proj_lin=proj_lin), out / CHECKPOINT, out / LOG]
        barrier()  # no process returns before rank 0's files are complete
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return DistillResult(student, history, files, peak)


def check_config(config: DistillConfig) -> World:
    """The processes this run is split over, after checking that the config fits them (callers can fail
    before loading any model)."""
    world = current_world()
    if config.batch_size < 1 or config.batch_size % world.size:
        raise DistillError(
            f"batch_size must be a positive multiple of the number of processes ({world.size}), "
            f"got {config.batch_size}"
        )
    if config.parallel not in PARALLEL:
        raise DistillError(f"parallel must be one of {PARALLEL}, got {config.parallel!r}")
    return world


class _Loop:
    """One optimizer step over this process's share of a batch, and the teacher-cache fill."""

    def __init__(self, teacher, student, model, taps, optimizer, params, config, steps, device, world) -> None:
        self.teacher, self.student, self.model, self.taps = teacher, student, model, taps
        self.optimizer, self.params, self.config, self.steps = optimizer, params, config, steps
        self.device, self.world = device, world
        self.cache: TeacherCache | None = None

    def step(self, step: int, batch: list[tuple[int, int | None, Any]]) -> dict[str, Any]:
        """Gradient accumulation over the micro-batches (one scene each); the loss of each is scaled so that
        the gradients, averaged over processes, are the mean over the whole batch."""
        started = time.perf_counter()
        config = self.config
        lr = config.lr_at(step, self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, list[float]] = {name: [0.0, 0.0] for name in TERMS}  # sum, count over scenes
        for i, (position, index, item) in enumerate(batch):
            torch.manual_seed(_sample_seed(config.seed, position))
            images = item_images(item).to(self.device)
            teacher_out, teacher_attention = self._targets(index, images)
            with gradient_sync(self.model, enabled=i == len(batch) - 1):
                with autocast(self.device, config.bf16), self.taps[1].record() as student_attention:
                    student_out = self.model(images)
                scene = item if isinstance(item, Scene) else None
                loss, terms = distillation_losses(
                    student_out, teacher_out, student_attention, teacher_attention, config.weights,
                    family_of(self.teacher), scene,
                )
                (loss * (self.world.size / config.batch_size)).backward()
            for name, value in {"loss": loss.item(), **terms}.items():
                totals[name][0] += value
                totals[name][1] += 1
        summed = all_sum(torch.tensor(list(totals.values()), dtype=torch.float64, device=self.device)).tolist()
        means = {name: total / count for name, (total, count) in zip(totals, summed) if count}
        if not math.isfinite(means["loss"]):
            raise DistillError(f"the loss became {means['loss']} at step {step}; lower the learning rate ({config.lr})")
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip))
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return {
            "step": step,
            **means,
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "time_s": time.perf_counter() - started,
        }

    def fill_cache(self, data, progress: bool) -> None:
        """Teacher targets of this process's shard of the scenes not cached yet. With a sharded (FSDP) teacher
        every forward is collective, so a process with fewer scenes runs spare forwards to keep in step."""
        todo = self.cache.missing(len(data), self.world)
        in_step = self.config.parallel == "fsdp" and self.world.size > 1
        rounds = all_max(len(todo), self.device) if in_step else len(todo)
        with _progress_bar(progress and self.world.is_main, rounds, 0, "teacher cache") as advance:
            for k in range(rounds):
                index = todo[k] if k < len(todo) else None
                images = item_images(data[index if index is not None else 0]).to(self.device)
                outputs, attention = self._teacher(images)
                if index is not None:
                    self.cache.save(index, outputs, attention)
                advance({})
        barrier()

    def _targets(self, index: int | None, images: torch.Tensor):
        if self.cache is not None:
            return self.cache.load(index, self.device)
        return self._teacher(images)

    def _teacher(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        with torch.no_grad(), autocast(self.device, self.config.bf16), self.taps[0].record() as attention:
            outputs = self.teacher(images)
        return outputs, attention


def _check_student(teacher: nn.Module, student: nn.Module, allowed: str = "proj_lin") -> list[nn.Parameter]:
    """The student's trainable parameters, which must be exactly its SLA ``proj_lin`` weights (unless
    ``allowed`` is ``"all"``)."""
    if allowed not in ("proj_lin", "all"):
        raise DistillError(f"trainable must be 'proj_lin' or 'all'; got {allowed!r}")
    if student is teacher:
        raise DistillError("the student is the teacher; build it with lite3r.convert_to_sla(teacher)")
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        raise DistillError("the student has no trainable parameters; build it with lite3r.convert_to_sla(teacher)")
    others = [n for n, _ in trainable if ".proj_lin." not in f".{n}"]
    if others and allowed == "proj_lin":
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


def _check_checkpoint(checkpoint: dict[str, Any], student: nn.Module, steps: int, config: DistillConfig) -> None:
    if "batch_size" not in checkpoint:
        raise DistillError("the checkpoint was written by an older lite3r (no batch size); start over (--no-resume)")
    if set(checkpoint["proj_lin"]) != set(trainable_state(student)):
        raise DistillError("the checkpoint's proj_lin tensors do not match this student (other model or SLA layers?)")
    if checkpoint["step"] > steps:
        raise DistillError(f"the checkpoint is at step {checkpoint['step']}, beyond steps={steps}")
    if checkpoint["batch_size"] != config.batch_size:
        raise DistillError(
            f"the checkpoint was trained with batch_size {checkpoint['batch_size']}; resume with the same "
            f"(the step number decides which scenes come next), not {config.batch_size}"
        )


def _save(out: Path, student, optimizer, config: DistillConfig, step: int, fp8_qat: bool, world: World) -> None:
    """Gather the full training state (every process takes part) and write it from rank 0."""
    proj_lin, optimizer_state = gather_training_state(student, optimizer)
    if not world.is_main:
        return
    quant = None
    if fp8_qat:
        from lite3r.calibration.state import quant_state

        quant = quant_state(student)
    state = {
        "step": step,
        "batch_size": config.batch_size,
        "world_size": world.size,  # for the record: any number of processes may resume it
        "proj_lin": proj_lin,
        "optimizer": optimizer_state,
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


def _sample_seed(seed: int, position: int) -> int:
    """The RNG seed of the scene at ``position`` in the global stream: every process (rank) draws its own random
    numbers, and they do not depend on how many processes there are or on where a run was resumed."""
    return seed * 2**32 + position


def _is_sized(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def _batches(
    data: Iterable[Any], start: int, steps: int, config: DistillConfig, world: World
) -> Iterator[list[tuple[int, int | None, Any]]]:
    """This process's micro-batches of each optimizer step from ``start`` on: (stream position, dataset index,
    item). A sized dataset goes through :class:`SceneSampler` and a ``DataLoader`` (``config.num_workers``
    loading processes); any other iterable is cycled, each process keeping the items at its positions."""
    positions = stream_positions(config.batch_size, start, steps, world)
    if _is_sized(data):
        if len(data) == 0:
            raise DistillError("the training data is empty")
        sampler = SceneSampler(len(data), config.batch_size, steps, start=start, world=world, seed=config.seed,
                               shuffle=config.shuffle)  # fmt: skip
        loader = torch.utils.data.DataLoader(
            data, sampler=sampler, batch_size=None, collate_fn=_as_is, num_workers=config.num_workers
        )
        entries = zip(positions, sampler, loader)
    else:
        entries = ((position, None, item) for position, item in _cycled(data, positions))
    per_process = config.batch_size // world.size
    while batch := list(islice(entries, per_process)):
        yield batch


def _as_is(item: Any) -> Any:
    return item


def _cycled(data: Iterable[Any], positions: Iterator[int]) -> Iterator[tuple[int, Any]]:
    """The items at increasing ``positions`` of ``data`` repeated end to end."""
    wanted = next(positions, None)
    seen = 0
    while wanted is not None:
        before = seen
        for item in data:
            if seen == wanted:
                yield seen, item
                wanted = next(positions, None)
                if wanted is None:
                    return
            seen += 1
        if seen == before:
            raise DistillError("the training data is empty (or a one-shot iterator that ran out)")


class _progress_bar:
    """A rich progress bar showing the loss terms, or nothing when disabled."""

    def __init__(self, enabled: bool, steps: int, start: int, label: str = "distill") -> None:
        self.enabled, self.steps, self.start, self.label = enabled, steps, start, label

    def __enter__(self):
        if not self.enabled:
            return lambda record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[terms]}"),
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.steps, completed=self.start, terms="")

        def advance(record: dict[str, Any]) -> None:
            shown = {k: v for k, v in record.items() if k not in ("step", "lr", "grad_norm", "time_s")}
            self.bar.update(task, advance=1, terms=" ".join(f"{k}={v:.4g}" for k, v in shown.items()))

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
