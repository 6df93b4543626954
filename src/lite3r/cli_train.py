"""``lite3r distill`` and ``lite3r calibrate``: click commands over :mod:`lite3r.distill` and
:mod:`lite3r.calibration` (parse, call, print). ``lite3r.cli`` attaches them to the main group."""

from __future__ import annotations

from pathlib import Path

import click

from lite3r._click import one_line_errors

DATA_HELP = "'synthetic' (embedded scenes), or a folder: DTU / BlendedMVS (MVSNet layouts) or plain images."


def _model_options(fn):
    options = [
        click.option("--model", "model_name", default="vggt", show_default=True,
                     help="Preset (vggt, vggt-tiny, da3-large, da3-tiny)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official .pt/.safetensors"),
        click.option("--data", default="synthetic", show_default=True, help=DATA_HELP),
        click.option("--views", default=2, show_default=True, type=click.IntRange(min=1), help="Views per scene."),
        click.option("--size", type=click.IntRange(min=14), help="View width (multiple of 14); default: the model's."),
        click.option("--scenes", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Number of synthetic scenes (with --data synthetic)."),
        click.option("--seed", default=0, show_default=True, help="Seed for random weights, data order and scenes."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _recipe_options(fn):
    fn = click.option("--fp8-skip", multiple=True,
                      help="Module-name pattern never quantized (repeatable); default: *proj_lin*.")(fn)
    return click.option("--fp8-layers", multiple=True,
                        help="Module-name pattern to quantize (repeatable); default: the transformer trunk.")(fn)


def _recipe(fp8_layers: tuple[str, ...], fp8_skip: tuple[str, ...]):
    from lite3r.quant import DEFAULT_FP8_SKIP, FP8Recipe

    return FP8Recipe(layers=fp8_layers or None, skip=fp8_skip or DEFAULT_FP8_SKIP)  # None: the model's trunk


def _teacher_and_data(model_name, checkpoint, data, views, size, scenes, seed, dev, *, quiet=False):
    """The teacher on ``dev`` (a torch.device) and the data; ``quiet``: no notice (processes other than rank 0)."""
    import torch

    import lite3r
    from lite3r.data.datasets import open_scenes
    from lite3r.models import has_trained_weights

    torch.manual_seed(seed)
    teacher = lite3r.load_model(model_name, checkpoint=checkpoint).to(dev).eval()
    if not has_trained_weights(model_name, checkpoint) and not quiet:
        click.echo(f"No --checkpoint: {model_name} has random weights (seed {seed}).", err=True)
    dataset = open_scenes(data, views, size=size or teacher.family.image_size, num_scenes=scenes, seed=seed)
    if data == "synthetic":
        dataset = list(dataset)  # render once, reuse every epoch
    return teacher, dataset


@click.command("distill")
@_model_options
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1), help="Optimizer steps.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Scenes per optimizer step, over all processes together (a multiple of their number).")
@click.option("--fp8/--no-fp8", "fp8_qat", default=True, show_default=True, help="FP8-aware training (ModelOpt QAT).")
@click.option("--lr", default=5e-3, show_default=True, type=float)
@click.option("--layers", type=click.Choice(["global", "all"]), default="global", show_default=True,
              help="Attention layers converted to SLA.")
@click.option("--kh", default=0.05, show_default=True, help="SLA: fraction of critical key blocks.")
@click.option("--kl", default=0.10, show_default=True, help="SLA: fraction of negligible key blocks.")
@click.option("--gt-depth-weight", default=0.0, show_default=True, help="Weight of the ground-truth depth loss.")
@click.option("--grad-checkpointing", is_flag=True, help="Recompute aggregator blocks in the backward pass.")
@_recipe_options
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="Under torchrun: replicate the models (ddp) or shard teacher and student (fsdp, FSDP2).")
@click.option("--teacher-cache", is_flag=True,
              help="Compute the teacher's targets once into OUT/teacher_cache and read them back every epoch.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Data-loading processes per training process.")
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(min=1),
              help="Write checkpoint.pt every N steps (and at the end).")
@click.option("--no-resume", is_flag=True, help="Start over even if --out has a checkpoint.")
@one_line_errors
def distill_command(model_name, checkpoint, data, views, size, scenes, seed, device, out, steps, batch_size, fp8_qat,
                    lr, layers, kh, kl, gt_depth_weight, grad_checkpointing, fp8_layers, fp8_skip, parallel,
                    teacher_cache, workers, checkpoint_every, no_resume):
    """Distil the dense model into an SLA student (only proj_lin trains), optionally FP8-aware.

    Writes student.safetensors, quant_state.json (with --fp8), checkpoint.pt and log.jsonl into --out.
    Runs unchanged on several processes: torchrun --nproc_per_node N "$(command -v lite3r)" distill ...
    """
    import lite3r
    from lite3r._io import check_writable_dir
    from lite3r.distill import DistillConfig, LossWeights, distill
    from lite3r.distill.distributed import process_group
    from lite3r.distill.train import check_config

    check_writable_dir(out)
    config = DistillConfig(lr=lr, weights=LossWeights(gt_depth=gt_depth_weight), grad_checkpointing=grad_checkpointing,
                           seed=seed, checkpoint_every=checkpoint_every, batch_size=batch_size, parallel=parallel,
                           teacher_cache=teacher_cache, num_workers=workers)  # fmt: skip
    with process_group(device) as dev:
        main = check_config(config).is_main  # a batch that does not split over the processes fails here
        teacher, dataset = _teacher_and_data(model_name, checkpoint, data, views, size, scenes, seed, dev,
                                             quiet=not main)
        student = lite3r.convert_to_sla(teacher, layers=layers, kh=kh, kl=kl)
        result = distill(teacher, student, dataset, steps, fp8_qat=fp8_qat, config=config,
                         recipe=_recipe(fp8_layers, fp8_skip), out_dir=out, resume=not no_resume, progress=True)
    if main:
        click.echo(str(result))
        for path in result.files:
            click.echo(f"wrote {path}")


@click.command("calibrate")
@_model_options
@click.option("--student", "student_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of a distilled student (student.safetensors); default: calibrate the model as loaded.")
@click.option("--batches", default=4, show_default=True, type=click.IntRange(min=1), help="Calibration scenes.")
@_recipe_options
@one_line_errors
def calibrate_command(model_name, checkpoint, data, views, size, scenes, seed, device, out, student_dir, batches,
                      fp8_layers, fp8_skip):
    """FP8 post-training calibration (ModelOpt, max amax): writes quant_state.json into --out."""
    from lite3r._io import check_writable_dir
    from lite3r.calibration import calibrate_fp8, save_quant_state
    from lite3r.distill import load_student
    from lite3r.distill.checkpoint import QUANT_STATE
    from lite3r.predict import resolve_device

    check_writable_dir(out)
    model, dataset = _teacher_and_data(model_name, checkpoint, data, views, size, scenes, seed, resolve_device(device))
    if student_dir is not None:
        model = load_student(model, student_dir, fp8=False)
    calibrate_fp8(model, dataset, recipe=_recipe(fp8_layers, fp8_skip), num_batches=batches)
    click.echo(f"wrote {save_quant_state(model, out / QUANT_STATE)}")
