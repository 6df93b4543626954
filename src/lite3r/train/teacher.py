"""``train_teacher``: train a VGGT-architecture model from scratch on synthetic scenes with ground truth.

Every step draws a number of views ``S`` (uniform in ``config.views``) and ``images_per_step // S`` scenes
from a :class:`~lite3r.train.data.ScenePool` on the training device, runs the model under bf16 autocast,
and minimises the VGGT objective (:mod:`lite3r.train.losses`) with AdamW, a linear warmup and a cosine
decay, and gradient clipping. Given ``minutes``, the step count is estimated from the measured speed after
``probe_steps`` steps and renewed at 2, 4, 8 ... times that while less than half has run, so that the cosine
ends inside the budget (a hard deadline stops the run if it still goes slow); re-running with ``steps`` = the
recorded count repeats the schedule up to those early renewals.

``out_dir`` receives ``log.jsonl`` (one record per step, ``{"eval": ...}`` records for the held-out curve),
an atomic resumable ``checkpoint.pt``, and at the end the weights ``<model>.safetensors`` (bf16) with their
weight card ``<model>.json`` (:func:`lite3r.models._pretrained.save_weights`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lite3r._io import atomic_write_bytes
from lite3r.calibration.fp8 import autocast
from lite3r.train.data import RESERVED_SEEDS, ScenePool, held_out_scenes
from lite3r.train.evaluate import evaluate, predict
from lite3r.train.losses import LossConfig, normalize_scene, vggt_loss

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
MAX_SKIPPED = 10  # consecutive steps with a non-finite loss that end the run
CURVE_METRICS = ("depth_abs_rel", "depth_delta_1_25", "rotation_error_deg", "translation_error_deg")


class TrainError(ValueError):
    """Teacher training cannot start or continue (bad options, diverged loss, unusable checkpoint)."""


@dataclass(frozen=True)
class TeacherConfig:
    """The recipe (recorded in the weight card); ``docs/train.md`` says why these values."""

    model: str = "vggt-small"
    image_size: int = 224
    views: tuple[int, int] = (2, 24)  # views per scene, drawn uniformly each step
    images_per_step: int = 64  # scenes per step = images_per_step // views
    pool_scenes: int = 512
    refresh_per_step: int = 1  # new scenes rendered into the pool per step
    lr: float = 8e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_fraction: float = 0.02  # the cosine ends at lr * min_lr_fraction
    grad_clip: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)
    bf16: bool = True  # autocast on CUDA; CPU runs in float32
    seed: int = 0
    eval_every: int = 200  # steps between held-out evaluations (0: only at the start and the end)
    eval_scenes: int = 4
    eval_views: int = 16
    checkpoint_every: int = 250
    probe_steps: int = 30  # with a time budget: the step count is estimated after 1, 2, 4 ... x this many steps

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "betas", tuple(self.betas))
        low, high = self.views
        problems = []
        if not 1 <= low <= high:
            problems.append(f"views {self.views} must be (min, max) with 1 <= min <= max")
        if self.images_per_step < high:
            problems.append(f"images_per_step {self.images_per_step} must hold one scene of {high} views")
        if self.seed in RESERVED_SEEDS:
            problems.append(f"seed {self.seed} is a reserved scene family (held-out / distillation scenes)")
        if self.pool_scenes < self.images_per_step // low:
            problems.append(f"pool_scenes {self.pool_scenes} is fewer than the {self.images_per_step // low} "
                            f"scenes a step of {low}-view scenes draws")  # fmt: skip
        if problems:
            raise TrainError("; ".join(problems))

    def lr_at(self, step: int, steps: int) -> float:
        """Linear warmup over ``warmup_steps``, then a cosine down to ``lr * min_lr_fraction`` at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, steps - self.warmup_steps))
        return self.lr * (self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TeacherResult:
    model: nn.Module = field(repr=False)
    steps: int
    history: list[dict[str, Any]] = field(repr=False)  # per-step records of this call
    evals: list[dict[str, Any]] = field(repr=False)  # held-out evaluations of this call
    files: list[Path]
    seconds: float
    card: dict[str, Any] = field(repr=False)


def train_teacher(
    config: TeacherConfig | None = None,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    device: str | torch.device = "cuda",
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
) -> TeacherResult:
    """Train ``config.model`` from random weights for ``steps`` steps or as many as fit in ``minutes``."""
    import lite3r

    started = time.perf_counter()
    config = config or TeacherConfig()
    if steps is None and minutes is None:
        raise TrainError("give steps, minutes or both")
    if (steps is not None and steps < 1) or (minutes is not None and minutes <= 0):
        raise TrainError(f"steps must be >= 1 and minutes > 0; got steps={steps}, minutes={minutes}")
    deadline = None if minutes is None else started + 60 * minutes
    device = torch.device(device)
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = _load_checkpoint(out, resume)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = lite3r.load_model(config.model, pretrained=False, img_size=config.image_size).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    pool = ScenePool(config.pool_scenes, config.views[1], config.image_size, config.seed, device)
    start, total = 0, steps
    if checkpoint is not None:
        start, total = _restore(checkpoint, config, model, optimizer, generator, pool, steps)
    else:
        pool.fill()
    held_out = held_out_scenes(config.eval_scenes, config.eval_views, config.image_size, device)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(out / LOG, start)

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        if out is not None:
            with open(out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def held_out_eval(step: int) -> None:
        t = time.perf_counter()
        metrics = evaluate(predict(model, held_out, bf16=config.bf16), held_out)
        record = {"eval": step, **{k: metrics[k] for k in CURVE_METRICS}, "time_s": time.perf_counter() - t}
        evals.append(record)
        log(record)

    if start == 0:
        held_out_eval(0)
    model.train()
    step = start
    with _progress_bar(progress, total) as bar, _training_flags(device):
        while total is None or step < total:
            if deadline is not None and time.perf_counter() > deadline:
                break  # ran slower than the probe said: stop in time, the card records the steps run
            record = _step(model, optimizer, pool, generator, config, step, total, device)
            history.append(record)
            log(record)
            step += 1
            if all(r["skipped"] for r in history[-MAX_SKIPPED:]) and len(history) >= MAX_SKIPPED:
                raise TrainError(f"the loss was not finite for {MAX_SKIPPED} steps in a row (step {step}); "
                                 f"lower the learning rate ({config.lr})")  # fmt: skip
            if deadline is not None and _estimate_now(step - start, total, config.probe_steps):
                total = _steps_that_fit(history, evals, config, step, deadline, steps)
                bar.set_total(total)
            if config.eval_every and step % config.eval_every == 0:
                held_out_eval(step)
            if out is not None and step % config.checkpoint_every == 0:
                _save_checkpoint(out, model, optimizer, generator, pool, config, step, total or step)
            bar.advance(record)
    if step == start and (total is None or start < total):
        raise TrainError(f"the time budget ({minutes} min) ended before the first training step; give more minutes")
    total = step
    if not evals or evals[-1]["eval"] != step:
        held_out_eval(step)
    model.eval()
    seconds = time.perf_counter() - started
    card = _card(config, model, step, seconds, evals, device) | {"skipped_steps": sum(r["skipped"] for r in history)}
    files: list[Path] = []
    if out is not None:
        from lite3r.models._pretrained import save_weights

        _save_checkpoint(out, model, optimizer, generator, pool, config, step, total)
        files = [*save_weights(model, out / f"{config.model}.safetensors", card), out / CHECKPOINT, out / LOG]
    return TeacherResult(model, step, history, evals, files, seconds, card)


@contextlib.contextmanager
def _training_flags(device: torch.device) -> Iterator[None]:
    """On CUDA while training: TF32 for the fp32 heads' matmuls and convolutions, and cuDNN autotuning (one
    tuning per batch shape, i.e. per view count); the previous settings come back afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the weight matrices and convolution kernels only: not on biases, norms, LayerScale
    gammas, learned tokens or position tables (the usual ViT practice, timm's ``param_groups_weight_decay``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        plain = param.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed"))
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step(model, optimizer, pool, generator, config: TeacherConfig, step: int, total: int | None, device):
    started = time.perf_counter()
    lr = config.lr_at(step, total or step + config.warmup_steps + 1)  # warmup needs no total yet
    for group in optimizer.param_groups:
        group["lr"] = lr
    pool.refresh(config.refresh_per_step)
    views = int(torch.randint(config.views[0], config.views[1] + 1, (1,), generator=generator))
    batch = pool.sample(config.images_per_step // views, views, generator)
    targets = normalize_scene(batch.extrinsics, batch.intrinsics, batch.depth, batch.valid)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, config.bf16):
        outputs, poses = model.forward_with_pose_iterations(batch.images)
    loss, terms = vggt_loss(outputs, poses, targets, config.loss)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    values = torch.stack([loss.detach(), grad_norm, *terms.values()]).tolist()  # one device sync per step
    finite = math.isfinite(values[0]) and math.isfinite(values[1])
    if finite:  # a rare overflow (exp of a large confidence logit) skips the step rather than ending the run
        optimizer.step()
    return {
        "step": step,
        "loss": values[0],
        **dict(zip(terms, values[2:])),
        "lr": lr,
        "grad_norm": values[1],
        "views": views,
        "scenes": len(batch.images),
        "skipped": not finite,
        "time_s": time.perf_counter() - started,
    }


def _estimate_now(run: int, total: int | None, probe: int) -> bool:
    """With a time budget the step count is (re-)estimated after ``probe``, 2, 4, 8 ... x ``probe`` steps of this
    run, while less than half of the current estimate has run: the speed settles once every view count has
    been seen (each new shape costs kernel selection), and a change of the total that early moves the cosine
    schedule by a negligible amount."""
    if run < probe or run % probe or (run // probe) & (run // probe - 1):
        return False
    return total is None or run < total / 2


def _steps_that_fit(history, evals, config: TeacherConfig, done: int, deadline: float, cap: int | None) -> int:
    """The step count that ends the run inside the deadline: the median time of the last ``probe_steps`` steps
    (robust to the first step of each new view count) plus the held-out evaluations, spread over the steps,
    and a reserve for the final evaluation and the saved files."""
    per_step = statistics.median(r["time_s"] for r in history[-config.probe_steps :])
    eval_s = statistics.median(e["time_s"] for e in evals) if evals else 0.0
    if config.eval_every:
        per_step += eval_s / config.eval_every
    remaining = (deadline - time.perf_counter()) * 0.97 - eval_s - 5.0
    fitting = done + max(0, int(remaining / per_step))
    return min(fitting, cap) if cap is not None else fitting


def _card(config: TeacherConfig, model: nn.Module, steps: int, seconds: float, evals, device) -> dict[str, Any]:
    import lite3r

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    final = evals[-1]
    return {
        "model": config.model,
        "config": asdict(model.config),
        "recipe": asdict(config),
        "seed": config.seed,
        "steps": steps,
        "images_seen": steps * config.images_per_step,
        "train_seconds": round(seconds, 1),
        "held_out": {
            "scenes": config.eval_scenes,
            "views": config.eval_views,
            "size": config.image_size,
            "initial": {k: evals[0][k] for k in CURVE_METRICS},
            "final": {k: final[k] for k in CURVE_METRICS},
        },
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name,
        "torch": torch.__version__,
        "lite3r": lite3r.__version__,
    }


def _save_checkpoint(out: Path, model, optimizer, generator, pool, config, step: int, total: int) -> None:
    state = {
        "step": step,
        "total": total,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "rng": torch.get_rng_state(),
        "pool_indices": torch.tensor(pool.indices),
        "pool_next": pool.next_index,
        "config": json.dumps(asdict(config)),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out / CHECKPOINT, buffer.getvalue())


def _load_checkpoint(out: Path | None, resume: bool) -> dict[str, Any] | None:
    if out is None or not resume or not (out / CHECKPOINT).is_file():
        return None
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)


def _restore(checkpoint, config, model, optimizer, generator, pool, steps: int | None) -> tuple[int, int]:
    if json.loads(checkpoint["config"]) != json.loads(json.dumps(asdict(config))):
        raise TrainError(f"{CHECKPOINT} was written with another recipe; use a new --out or --no-resume")
    total = checkpoint["total"] if steps is None else steps
    if checkpoint["step"] > total:
        raise TrainError(f"the checkpoint is at step {checkpoint['step']}, beyond steps={total}")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    generator.set_state(checkpoint["generator"])
    torch.set_rng_state(checkpoint["rng"])
    pool.fill(checkpoint["pool_indices"].tolist(), checkpoint["pool_next"])
    return checkpoint["step"], total


def _truncate_log(path: Path, start: int) -> None:
    """Keep the records of the steps before ``start`` (a crash may have logged steps after the checkpoint)."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    kept = [r for r in records if r.get("step", r.get("eval")) < start]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


class _progress_bar:
    """A rich progress bar with the loss and the latest held-out depth error, or nothing when disabled."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> _progress_bar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("train-teacher"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"))  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, info="")
        return self

    def set_total(self, total: int) -> None:
        if self.enabled:
            self.bar.update(self.task, total=total)

    def advance(self, record: dict[str, Any]) -> None:
        if self.enabled:
            info = f"loss {record['loss']:.4g} lr {record['lr']:.2e} {record['views']} views"
            self.bar.update(self.task, advance=1, info=info)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
