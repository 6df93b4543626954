"""``lite3r train-teacher``: a click command over :func:`lite3r.train.train_teacher` (parse, call, print).
``lite3r.cli`` attaches it to the main group."""

from __future__ import annotations

from pathlib import Path

import click

from lite3r._click import one_line_errors


@click.command("train-teacher")
@click.option("--model", help="Preset to train from scratch.")
@click.option("--steps", type=click.IntRange(min=1), help="Steps to run (with --minutes: at most this many).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help="Time budget: the step count is set from the measured speed so that the run ends in time.")
@click.option("--size", "image_size", type=click.IntRange(min=14), help="View size (multiple of 14).")
@click.option("--views", help="Views per scene, MIN:MAX, drawn per step.")
@click.option("--images-per-step", type=click.IntRange(min=1), help="Images per step (scenes x views).")
@click.option("--pool", "pool_scenes", type=click.IntRange(min=1),
              help="Scenes kept rendered on the device, one new one per step.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=1), help="Linear warmup steps.")
@click.option("--eval-every", type=click.IntRange(min=0), help="Steps between held-out evaluations.")
@click.option("--seed", type=int, help="Seed of the weights, the sampling and the training scenes.")
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N or cpu.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--no-resume", is_flag=True, help="Start over even if --out has a checkpoint.")
@one_line_errors
def train_teacher_command(steps, minutes, views, device, out, no_resume, **recipe):
    """Train a VGGT-architecture teacher from scratch on synthetic scenes (camera, depth and point losses).

    Options left out take the recipe's defaults (lite3r.train.TeacherConfig; docs/train.md). Writes
    <model>.safetensors (bf16) + <model>.json (weight card), checkpoint.pt and log.jsonl into --out;
    `python3 scripts/install_teacher.py OUT` makes the weights the preset's shipped ones.
    """
    from lite3r._io import check_writable_dir
    from lite3r.predict import resolve_device
    from lite3r.train import TeacherConfig, train_teacher

    if steps is None and minutes is None:
        raise click.UsageError("give --steps N, --minutes M, or both")
    if views is not None:
        low, _, high = views.partition(":")
        try:
            recipe["views"] = (int(low), int(high or low))
        except ValueError:
            raise click.BadParameter(f"{views!r} is not MIN:MAX (e.g. 2:24)", param_hint="--views") from None
    check_writable_dir(out)
    config = TeacherConfig(**{k: v for k, v in recipe.items() if v is not None})
    result = train_teacher(config, steps=steps, minutes=minutes, device=resolve_device(device), out_dir=out,
                           resume=not no_resume, progress=True)  # fmt: skip
    first, last = result.evals[0], result.evals[-1]
    click.echo(f"{result.steps} steps in {result.seconds:.0f} s; held-out depth AbsRel {first['depth_abs_rel']:.3f} "
               f"-> {last['depth_abs_rel']:.3f}, rotation error {first['rotation_error_deg']:.1f} -> "
               f"{last['rotation_error_deg']:.1f} deg")  # fmt: skip
    for path in result.files:
        click.echo(f"wrote {path}")
