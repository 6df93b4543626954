"""Command line: a thin click layer over the Python API (parse, call, print)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lite3r._click import one_line_errors, quiet_third_party
from lite3r.exporter import PRECISION_NAMES
from lite3r.parity.gates import TEACHER_GATE_MODES

console = Console(stderr=True)
out_console = Console()


def _stages() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        h = None
    if not h or not w or h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 518x518) or a single size", param_hint="--size")
    return h, w


def _metrics_table(metrics: dict[str, float]) -> Table:
    table = Table(title="Reconstruction vs ground truth")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}")
    return table


@click.group()
@click.version_option(package_name="lite3r")
def main() -> None:
    """lite3r: fast feed-forward 3D reconstruction (VGGT, Depth-Anything-3) with SLA, FP8, ONNX and TensorRT."""


@main.command()
@click.option("--model", "model_name", default="vggt", show_default=True,
              help="Model preset (vggt, vggt-small, vggt-tiny, da3-large, da3-tiny).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official .pt/.safetensors.")
@click.option("--images", type=click.Path(path_type=Path), help="Folder of images (one scene).")
@click.option("--synthetic", type=click.IntRange(min=1), help="Render a synthetic scene with N views instead.")
@click.option("--size", help="Synthetic view size HxW (multiples of 14); default: the model's image size.")
@click.option("--mode", type=click.Choice(["crop", "pad"]), default="crop", show_default=True,
              help="Image preprocessing as in the official VGGT.")
@click.option("--seed", default=0, show_default=True, help="Seed for random weights and synthetic scenes.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True)
@click.option("--sla", is_flag=True, help="Run the SLA student (convert_to_sla) instead of the dense model.")
@click.option("--sla-layers", type=click.Choice(["global", "all"]), default="global", show_default=True)
@click.option("--kh", default=0.05, show_default=True, help="SLA critical-block fraction.")
@click.option("--kl", default=0.10, show_default=True, help="SLA negligible-block fraction.")
@click.option("--student", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of a distilled student (student.safetensors [+ quant_state.json]); implies --sla.")
@click.option("--random-weights", is_flag=True,
              help="Allow a full-size model without --checkpoint (random weights: meaningless output).")
@one_line_errors
def predict(model_name, checkpoint, images, synthetic, size, mode, seed, out, device, dtype, sla, sla_layers, kh, kl,
            student, random_weights):
    """Predict depth, points and cameras for one scene; write .npz, a contact sheet and metrics."""
    import torch

    import lite3r
    from lite3r._io import check_writable_dir
    from lite3r.models import has_trained_weights
    from lite3r.predict import DTYPES, resolve_device, run_model, save_prediction

    if (images is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --images DIR or --synthetic N")
    from lite3r.models import list_models

    full_size = model_name in list_models() and not model_name.endswith("-tiny")
    if full_size and not has_trained_weights(model_name, checkpoint) and not random_weights:
        raise click.UsageError(
            f"--model {model_name} without --checkpoint builds the full model with random weights (meaningless "
            "output, minutes of work): pass --checkpoint (official weights, e.g. model.pt from facebook/VGGT-1B), "
            "try --model vggt-small (shipped weights) or vggt-tiny, or add --random-weights"
        )
    hw = _parse_size(size)
    dev = resolve_device(device)
    check_writable_dir(out)

    with _stages() as progress:
        task = progress.add_task("loading model", total=4)
        torch.manual_seed(seed)
        model = lite3r.load_model(model_name, checkpoint=checkpoint)
        if not has_trained_weights(model_name, checkpoint):
            console.print(f"[yellow]No --checkpoint: {model_name} has random weights (seed {seed}).[/]")
        if student is not None:
            from lite3r.distill import load_student

            model = load_student(model, student)
        elif sla:
            model = lite3r.convert_to_sla(model, layers=sla_layers, kh=kh, kl=kl)
        progress.update(task, advance=1, description="loading views")
        scene = None
        if images is not None:
            from lite3r.data import load_images

            views = load_images(images, mode=mode, target_size=model.family.image_size)
        else:
            from lite3r.data.synthetic import make_scene

            h, w = hw or (model.family.image_size,) * 2
            scene = make_scene(synthetic, height=h, width=w, seed=seed)
            views = scene.images
        progress.update(task, advance=1, description=f"running {model_name} on {len(views)} views")
        outputs = run_model(model, views, device=dev, dtype=DTYPES[dtype])
        progress.update(task, advance=1, description="scoring and saving")
        metrics = None
        if scene is not None:
            from lite3r.metrics import reconstruction_metrics

            metrics = reconstruction_metrics(outputs, scene, model.family)
        written = save_prediction(out, views, outputs, model.family, metrics, None if scene is None else scene.depth)
        progress.update(task, advance=1, description="done")

    if metrics:
        out_console.print(_metrics_table(metrics))
    if len(views) > 12:
        console.print(f"contact_sheet.png shows the first 12 of {len(views)} views; predictions.npz has all")
    for path in written:
        out_console.print(f"wrote {path}")


_student_option = click.option(
    "--student", "student_dir", type=click.Path(file_okay=False, path_type=Path),
    help="Folder with student.safetensors [+ quant_state.json] (from lite3r distill / lite3r-export).",
)


@main.command()
@click.argument("onnx_path", metavar="[MODEL.onnx]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Engine (or, --target torch, model.pt2) to write.")
@click.option("--target", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx", "torch"]), default="auto",
              show_default=True, help="auto: datacenter TensorRT if installed, else TensorRT-RTX. torch: an "
              "AOTInductor package built from the PyTorch model, not from ONNX.")
@click.option("--frames", default="1:8:32", show_default=True, help="Frame range min:opt:max.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Read before, written after.")
@click.option("--verbose", is_flag=True, help="Keep TensorRT's verbose messages in the build log.")
@click.option("--tf32", is_flag=True, help="Allow TF32 for float32 layers (off: exact float32 block scores).")
@click.option("--model", "model_name", default="vggt", show_default=True, help="torch target: model preset.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="torch target: teacher weights.")
@_student_option
@click.option("--size", help="torch target: view size HxW; default: the model's image size.")
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="bf16", show_default=True,
              help="torch target: weights and activations.")
@click.option("--device", default="cuda", show_default=True, help="torch target: the device the package runs on.")
@one_line_errors
def build(onnx_path, out, target, frames, timing_cache, verbose, tf32, model_name, checkpoint, student_dir, size,
          precision, device):
    """Build a strongly typed (FP8 from the graph's Q/DQ) TensorRT or TensorRT-RTX engine from an ONNX file, or
    (--target torch) an AOTInductor model.pt2 of the student (FP8 GEMMs from its quant_state.json)."""
    if target == "torch":
        _build_pt2(out, frames, model_name, checkpoint, student_dir, size, precision, device)
        return
    if onnx_path is None:
        raise click.UsageError(f"--target {target} builds from an ONNX file: give MODEL.onnx")
    from lite3r.deploy import build_engine
    from lite3r.pipeline import resolve_target

    target = resolve_target(target)
    if target == "onnx":
        raise click.UsageError("no TensorRT is installed: pip install 'lite3r[tensorrt-rtx]' (or 'lite3r[tensorrt]')")
    with console.status(f"building {target} engine"):
        report = build_engine(onnx_path, out, target=target, frames=frames, timing_cache=timing_cache, verbose=verbose,
                              tf32=tf32)  # fmt: skip
    out_console.print(report.summary())


def _build_pt2(out, frames, model_name, checkpoint, student_dir, size, precision, device):
    import torch

    from lite3r.deploy.torch.pt2 import export_pt2, pt2_device
    from lite3r.exporter.export import PRECISIONS

    pt2_device(device)  # before the model is built
    torch.manual_seed(0)
    teacher, student = _teacher_and_student(model_name, checkpoint, student_dir, fp8=False)
    quant = None if student_dir is None else Path(student_dir) / "quant_state.json"
    with console.status("exporting and compiling model.pt2 (AOTInductor)"):
        report = export_pt2(
            student or teacher, out, frames=frames, image_size=_parse_size(size), dtype=PRECISIONS[precision],
            quant_state=quant if quant is not None and quant.exists() else None, device=device,
        )  # fmt: skip
    out_console.print(report.summary())


def _teacher_and_student(model_name, checkpoint, student_dir, *, fp8: bool):
    import lite3r
    from lite3r.distill import load_student
    from lite3r.models import has_trained_weights

    teacher = lite3r.load_model(model_name, checkpoint=checkpoint)
    if not has_trained_weights(model_name, checkpoint):
        console.print(f"[yellow]No --checkpoint: {model_name} has random weights (seed 0).[/]")
    student = None if student_dir is None else load_student(teacher, student_dir, fp8=fp8)
    return teacher, student


@main.command("export")
@click.option("--model", "model_name", default="vggt", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official teacher weights.")
@_student_option
@click.option("--size", help="View size HxW fixed in the graph; default: the model's image size.")
@click.option("--frames", default=2, show_default=True, type=click.IntRange(min=1),
              help="Frames traced (the axis stays dynamic).")
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="Weights and activations of the graph; bf16/fp16 let TensorRT use the SLA plugin.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write.")
@one_line_errors
def export_command(model_name, checkpoint, student_dir, size, frames, precision, out):
    """Export the teacher, or a student with its FP8 scales, to ONNX (SLA as a custom op with a function body)."""
    quiet_third_party()
    import torch

    from lite3r.exporter import PRECISIONS, export_onnx

    torch.manual_seed(0)
    teacher, student = _teacher_and_student(model_name, checkpoint, student_dir, fp8=False)
    quant = None if student_dir is None else Path(student_dir) / "quant_state.json"
    model = (student or teacher).to(PRECISIONS[precision])  # ours to convert: no copy in the exporter
    with console.status("exporting ONNX"):
        report = export_onnx(
            model, out, image_size=_parse_size(size) or teacher.family.image_size, example_frames=frames,
            quant_state=quant if quant is not None and quant.exists() else None, precision=precision,
        )
    out_console.print(report.summary())


@main.command("parity")
@click.option("--from", "from_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Re-check a lite3r-export folder from its record.json (model, scenes and gates as recorded).")
@click.option("--model", "model_name", default="vggt", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official teacher weights.")
@_student_option
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), help="ONNX to compare.")
@click.option("--engine", "engine_path", type=click.Path(dir_okay=False, path_type=Path), help="TensorRT engine.")
@click.option("--pt2", "pt2_path", type=click.Path(dir_okay=False, path_type=Path),
              help="AOTInductor package (lite3r build --target torch).")
@click.option("--runtime", "runtime_device", metavar="DEVICE",
              help="Also compare the student through TorchRuntime on DEVICE (cuda: compiled + CUDA graphs; cpu: "
                   "eager), bf16, FP8 GEMMs where the student folder has quant_state.json; alone, without artifacts.")
@click.option("--synthetic", default=2, show_default=True, type=click.IntRange(min=1), help="Held-out scenes.")
@click.option("--views", default=2, show_default=True, type=click.IntRange(min=1), help="Views per scene.")
@click.option("--size", help="View size HxW; default: the model's image size.")
@click.option("--teacher-gate", type=click.Choice(TEACHER_GATE_MODES), default="auto", show_default=True,
              help="Gate on student-vs-teacher; auto: only for trained weights (--checkpoint, or shipped).")
@click.option("--precision", type=click.Choice(PRECISION_NAMES),
              help="Precision of the artifacts (the student is compared in it); default: the ONNX's.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report folder.")
@one_line_errors
def parity_command(from_dir, model_name, checkpoint, student_dir, onnx_path, engine_path, pt2_path, runtime_device,
                   synthetic, views, size, teacher_gate, precision, out):
    """Compare student, ONNX, engine and .pt2 against each other and the teacher; exit 1 when a gate fails."""
    import torch

    from lite3r.data.synthetic import make_scene
    from lite3r.models import has_trained_weights
    from lite3r.parity import check
    from lite3r.parity import teacher_gate as make_teacher_gate

    if from_dir is not None:
        from lite3r.pipeline import recheck

        with console.status(f"re-checking {from_dir} from its record"):
            result = recheck(from_dir, out)
        out_console.print(result.md_path.read_text())
        sys.exit(0 if result.passed else 1)
    if student_dir is None:
        raise click.UsageError("--student DIR is required (the model every artifact is compared with)")
    torch.manual_seed(0)
    teacher, student = _teacher_and_student(model_name, checkpoint, student_dir, fp8=True)
    h, w = _parse_size(size) or (teacher.family.image_size,) * 2
    scenes = [make_scene(views, h, w, seed=1000 + i).images for i in range(synthetic)]
    runtime = None if runtime_device is None else _student_runtime(teacher, student_dir, runtime_device)
    with console.status("running parity"):
        result = check(
            out, scenes, student=student, teacher=teacher, onnx_path=onnx_path, engine_path=engine_path,
            pt2_path=pt2_path, runtime=runtime, precision=precision,
            reconstruction_gate=make_teacher_gate(
                teacher_gate, trained_teacher=has_trained_weights(model_name, checkpoint)
            ),
        )
    out_console.print(result.md_path.read_text())
    if not result.passed:
        sys.exit(1)


def _student_runtime(teacher, student_dir: Path, device: str):
    """The student folder's model through ``TorchRuntime`` as ``lite3r bench`` runs it (its FP8 scales, if any)."""
    import torch

    from lite3r.calibration.state import read_quant_state
    from lite3r.deploy.torch import RuntimeOptions, TorchRuntime
    from lite3r.distill import load_student

    quant = student_dir / "quant_state.json"
    cuda = torch.device(device).type == "cuda"
    return TorchRuntime.build(
        load_student(teacher, student_dir, fp8=False), RuntimeOptions(compile=cuda, cuda_graphs=cuda), device=device,
        quant_state=read_quant_state(quant) if quant.exists() else None,
    )


@click.command(name="lite3r-export")
@click.argument("model_name", metavar="MODEL")
@click.option("--fp8/--no-fp8", default=False, help="FP8 (e4m3) Q/DQ from QAT or PTQ scales.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="Official teacher weights.")
@click.option("--distill-steps", default=0, show_default=True, type=int,
              help="Distillation (+ FP8 QAT with --fp8) steps; 0 = PTQ calibration only.")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration images: a folder (DTU/BlendedMVS/images).")
@click.option("--synthetic", default=4, show_default=True, type=click.IntRange(min=1),
              help="Calibration scenes: rendered when no --calib, else the first N of --calib.")
@click.option("--frames", default="2:8:32", show_default=True, help="Engine frame range min:opt:max.")
@click.option("--target", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx", "onnx", "torch"]), default="auto",
              show_default=True, help="auto: TensorRT, else TensorRT-RTX, else ONNX only; torch: ONNX + model.pt2.")
@click.option("--precision", type=click.Choice(PRECISION_NAMES),
              help="Weights and activations of the ONNX/engine/model.pt2; default: bf16 for a TensorRT target, "
                   "fp32 otherwise.")
@click.option("--size", help="View size HxW (multiples of 14); default: the model's image size.")
@click.option("--kh", default=0.05, show_default=True, help="SLA critical-block fraction.")
@click.option("--kl", default=0.10, show_default=True, help="SLA negligible-block fraction.")
@click.option("--dense-below", default=0, show_default=True, type=click.IntRange(min=0), metavar="TOKENS",
              help="A frame profile whose longest sequence is shorter than this exports exact attention (no SLA "
              "node), as TorchRuntime runs it; 0: SLA at every length. TorchRuntime's default: docs/runtime.md.")
@click.option("--teacher-gate", type=click.Choice(TEACHER_GATE_MODES), default="auto", show_default=True,
              help="Gate on student-vs-teacher parity; auto: only for trained weights (--checkpoint, or shipped "
                   "like vggt-small's; random teachers: report only).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Where distillation/calibration run.")
@click.option("--tf32", is_flag=True, help="Allow TF32 in the engine's float32 layers (off by default).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@one_line_errors
def export_main(model_name, fp8, checkpoint, distill_steps, calib, synthetic, frames, target, precision, size, kh,
                kl, dense_below, teacher_gate, seed, device, tf32, out):
    """Teacher → SLA student → FP8 → ONNX → engine → parity, into one folder; exits 1 when a parity gate fails."""
    quiet_third_party()
    from lite3r.pipeline import export_model

    stages = ["load teacher", "convert to SLA", "FP8 / distill", "save student", "export ONNX", "build engine",
              "parity"]
    with _stages() as progress:
        task = progress.add_task("starting", total=len(stages))

        def on_stage(name):
            progress.update(task, completed=stages.index(name), description=name)

        summary = export_model(
            model_name, out, fp8=fp8, checkpoint=checkpoint, distill_steps=distill_steps, calib=calib,
            synthetic=synthetic, frames=frames, target=target, precision=precision, image_size=_parse_size(size),
            kh=kh, kl=kl, dense_below=dense_below, teacher_gate=teacher_gate, seed=seed, device=device, tf32=tf32,
            on_stage=on_stage,
        )
        progress.update(task, completed=len(stages), description="done")

    table = Table(title=f"lite3r-export {model_name} -> {out}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("s", justify="right")
    table.add_column("detail", overflow="fold")
    for s in summary.stages:
        style = "green" if s.status == "done" else "yellow"
        table.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds:.1f}", s.detail)
    out_console.print(table)
    files = Table(title="artifacts")
    files.add_column("file")
    files.add_column("size", justify="right")
    for name, size_bytes in summary.artifacts.items():
        files.add_row(name, f"{size_bytes / 2**20:.2f} MiB")
    out_console.print(files)
    if not summary.passed:
        console.print(f"[red]parity {summary.parity_verdict}[/]")
        console.print(f"[red]{'; '.join(summary.parity_failures) or 'see parity.md'}[/]")
        sys.exit(1)
    out_console.print(f"[green]parity {summary.parity_verdict}[/]")


def _attach_commands() -> None:
    from lite3r.cli_bench import bench_command, bench_report_command
    from lite3r.cli_teacher import train_teacher_command
    from lite3r.cli_train import calibrate_command, distill_command

    main.add_command(distill_command, "distill")
    main.add_command(calibrate_command, "calibrate")
    main.add_command(bench_command, "bench")
    main.add_command(bench_report_command, "bench-report")
    main.add_command(train_teacher_command, "train-teacher")


_attach_commands()

if __name__ == "__main__":
    main()
