"""The whole chain behind ``lite3r-export``: teacher → SLA student → FP8 (QAT or PTQ) → ONNX → engine (or, for
``--target torch``, an AOTInductor ``model.pt2``) → parity.

Everything is checked before any work starts (frames, checkpoint, target, calibration folder, output folder,
and that ONNX Runtime runs a small graph of the export's form), every artifact is written into a staging folder,
and the output folder receives the complete set at the end (``lite3r._io``), so a failure never leaves a
half-written export behind and files of an earlier export that this one did not write again are removed. A parity
gate that fails still delivers the artifacts and the reports (they are complete and explain the failure); the
caller decides the exit status from ``ExportSummary.passed``. ``record.json`` (``lite3r._record``) says how the
folder was made; :func:`recheck` runs its parity again from it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r._io import check_writable_dir, staged_output
from lite3r._record import make_record, read_record, write_record
from lite3r.data.datasets import item_images
from lite3r.deploy.frames import parse_frames
from lite3r.deploy.tensorrt.flavour import FLAVOURS
from lite3r.exporter import PRECISION_NAMES
from lite3r.parity.gates import export_gate
from lite3r.sla.convert import restore_dense_attention
from lite3r.sla.module import check_dense_below

TARGETS = ("auto", "tensorrt", "tensorrt-rtx", "onnx", "torch")


class ExportError(ValueError):
    """Bad options for the export chain (caught before any work is done)."""


@dataclass
class StageReport:
    name: str
    status: str  # "done" or "skipped"
    detail: str
    seconds: float = 0.0


@dataclass
class ExportSummary:
    out: Path
    stages: list[StageReport] = field(default_factory=list)
    artifacts: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    parity_passed: bool | None = None
    parity_failures: list[str] = field(default_factory=list)
    parity_verdict: str = ""  # what the verdict covers, and what was not run

    @property
    def passed(self) -> bool:
        return self.parity_passed is not False


def resolve_target(target: str) -> str:
    """``auto`` picks datacenter TensorRT, then TensorRT-RTX, then ONNX only; an explicit TensorRT must import."""
    if target not in TARGETS:
        raise ExportError(f"--target must be one of {', '.join(TARGETS)}; got {target!r}")
    if target == "auto":
        for name, chosen in FLAVOURS.items():  # datacenter TensorRT first
            if importlib.util.find_spec(chosen.module) is not None:
                return name
        return "onnx"
    if target in FLAVOURS and importlib.util.find_spec(FLAVOURS[target].module) is None:
        hint = {
            "tensorrt": "datacenter TensorRT is not installed: pip install 'lite3r[tensorrt]' on a machine with an "
            "NVIDIA GPU, or use --target tensorrt-rtx / onnx",
            "tensorrt-rtx": "TensorRT-RTX is not installed: pip install 'lite3r[tensorrt-rtx]', or use --target onnx",
        }[target]
        raise ExportError(f"--target {target}: {hint}")
    return target


def frame_counts(frame_range) -> list[int]:
    """The frame counts calibration and parity cover: the profile's ``min`` and ``opt`` (the engine is tuned for
    ``opt``; ``max`` would only cost time on a CPU)."""
    return sorted({frame_range.min, frame_range.opt})


def resolve_precision(precision: str | None, target: str) -> str:
    """``None`` picks what the target runs: bf16 for a TensorRT target (the SLA plugin and 16-bit tensor cores;
    bf16 keeps float32's range, fp16 can overflow), float32 for ONNX only (what ONNX Runtime's CPU provider runs
    natively). ``target`` is a resolved one (``resolve_target``)."""
    if precision is None:
        return "bf16" if target in FLAVOURS else "fp32"
    if precision not in PRECISION_NAMES:
        raise ExportError(f"--precision must be one of {', '.join(PRECISION_NAMES)}; got {precision!r}")
    return precision


def _calibration_data(
    calib: str | Path | None, scenes: int, counts: list[int], size: tuple[int, int], seed: int
) -> tuple[list, str]:
    """``scenes`` calibration scenes cycling through ``counts`` frames, and a description. A folder with fewer
    images than a count calibrates at the counts it can serve (said in the description)."""
    from lite3r.data.datasets import DatasetError, open_scenes
    from lite3r.data.synthetic import SyntheticScenes

    if calib is None:
        sources = [SyntheticScenes(scenes, c, size[0], size[1], seed=seed) for c in counts]
        return [sources[i % len(counts)][i] for i in range(scenes)], f"{scenes} synthetic scenes"
    sources, skipped = [], []
    for count in counts:
        try:
            sources.append(open_scenes(calib, num_views=count, size=size[1]))
        except DatasetError:
            if count == counts[0]:
                raise
            skipped.append(count)
    available = sum(len(s) for s in sources)
    chosen = [sources[i % len(sources)][i // len(sources)] for i in range(min(scenes, available))
              if i // len(sources) < len(sources[i % len(sources)])]  # fmt: skip
    note = f" (too few images for {'/'.join(map(str, skipped))} frames)" if skipped else ""
    return chosen, f"{len(chosen)} scenes of folder {calib}{note}"


def _check_calibration_folder(calib: Path, frames: int) -> None:
    """A plain image folder must hold at least one scene of ``frames`` views (counted now, decoded later)."""
    from lite3r.data.images import list_images

    if not calib.is_dir():
        raise ExportError(f"--calib {calib}: not a folder")
    layouts = ("Rectified", "blended_images")
    if any((calib / name).is_dir() for name in layouts) or any(calib.glob("*/blended_images")):
        return  # DTU / BlendedMVS: checked by their readers
    found = len(list_images(calib))
    if found < frames:
        raise ExportError(f"--calib {calib} has {found} image(s); calibration scenes of {frames} frames need more")


def held_out_scenes(counts: list[int], size: tuple[int, int], per_count: int, seed: int) -> tuple[list, list[int]]:
    """Held-out synthetic scenes (seeds ``seed + 1000 + i``) at each frame count; images and their seeds."""
    from lite3r.data.synthetic import make_scene

    seeds = [seed + 1000 + i for i in range(per_count)]
    return [make_scene(c, *size, seed=s).images for c in counts for s in seeds], seeds


def export_model(
    model_name: str,
    out: str | Path,
    *,
    fp8: bool = False,
    checkpoint: str | Path | None = None,
    distill_steps: int = 0,
    calib: str | Path | None = None,
    synthetic: int = 4,
    frames: str = "2:8:32",
    target: str = "auto",
    precision: str | None = None,
    image_size: tuple[int, int] | None = None,
    kh: float = 0.05,
    kl: float = 0.10,
    dense_below: int = 0,
    parity_scenes: int = 2,
    teacher_gate: str = "auto",
    seed: int = 0,
    device: str = "cpu",
    tf32: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Run the chain and write ``student.safetensors``, ``quant_state.json``, ``model.onnx``, ``model.engine``
    (+ build log, where a TensorRT is installed) or ``model.pt2`` (``target="torch"``: an AOTInductor package for
    ``device``), ``parity.json``, ``parity.md``, ``export_summary.json`` and ``record.json`` into ``out``.
    Calibration and parity cover the profile's ``min`` and ``opt`` frame counts; ``parity_scenes`` held-out scenes
    at each. ``tf32``: let TensorRT use TF32 for float32 layers. ``dense_below``: a frame profile whose longest
    sequence is shorter than this many tokens is exported with exact attention (no SLA node), as ``TorchRuntime``
    runs such sequences; 0 keeps SLA at every length (``_attention_for_profile``).

    ``precision``: what the ONNX (and engine, or package) compute in, ``"fp32"``, ``"bf16"`` or ``"fp16"``; by
    default ``resolve_precision``'s choice for the target. Parity compares them with the student in that precision."""
    options = {k: v for k, v in locals().items() if k != "on_stage"}  # the arguments, for record.json
    import lite3r
    from lite3r.models import has_trained_weights, require_pretrained
    from lite3r.parity import teacher_gate as make_teacher_gate
    from lite3r.parity.runners import probe_onnxruntime
    from lite3r.predict import resolve_device

    frame_range = parse_frames(frames)
    counts = frame_counts(frame_range)
    target = options["target"] = resolve_target(target)
    precision = options["precision"] = resolve_precision(precision, target)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ExportError(f"checkpoint not found: {checkpoint}")
    if calib is not None:
        _check_calibration_folder(Path(calib), counts[0])
    trained = has_trained_weights(model_name, checkpoint)
    if checkpoint is None and trained:
        require_pretrained(model_name)  # shipped weights not installed: say so before any work
    reconstruction_gate = make_teacher_gate(teacher_gate, trained_teacher=trained)
    if distill_steps < 0:
        raise ExportError(f"--distill-steps must be >= 0; got {distill_steps}")
    check_dense_below(dense_below)
    dev = resolve_device(device)
    check_writable_dir(out)
    onnxruntime_version = probe_onnxruntime()  # seconds now, instead of a failure after the long stages

    summary = ExportSummary(out=Path(out))
    notify = on_stage or (lambda name: None)

    def stage(name: str, work: Callable[[], tuple[str, str] | str]) -> None:
        notify(name)
        start = time.perf_counter()
        result = work()
        status, detail = result if isinstance(result, tuple) else ("done", result)
        detail = detail.replace(str(state["stage_dir"]), str(out))  # where the files will be, not where staged
        summary.stages.append(StageReport(name, status, detail, time.perf_counter() - start))

    state: dict[str, Any] = {}
    with staged_output(out, writer="lite3r-export") as stage_dir:
        state["stage_dir"] = stage_dir

        def load():
            torch.manual_seed(seed)
            state["teacher"] = lite3r.load_model(model_name, checkpoint=checkpoint).to(dev)
            size = image_size or (state["teacher"].family.image_size,) * 2
            state["size"] = size
            if checkpoint:
                weights = f"weights {checkpoint}"
            else:
                weights = "shipped trained weights" if trained else f"RANDOM weights (seed {seed}; no --checkpoint)"
            return f"{model_name}, {weights}, views {size[0]}x{size[1]}"

        def convert():
            state["student"] = lite3r.convert_to_sla(state["teacher"], layers="global", kh=kh, kl=kl)
            state["dense"], note = _attention_for_profile(state["teacher"], frame_range, state["size"], dense_below)
            return f"SLA in the global-attention layers (kh={kh}, kl={kl})" + (f"; {note}" if note else "")

        def quantize():
            data, described = _calibration_data(calib, synthetic, counts, state["size"], seed)
            frames_used = "/".join(map(str, sorted({int(item_images(d).shape[1]) for d in data})))
            if distill_steps:
                from lite3r.distill import distill

                result = distill(state["teacher"], state["student"], data, distill_steps, fp8_qat=fp8)
                return f"{distill_steps} distillation steps" + (" with FP8 QAT" if fp8 else "") + f": {result}"
            if not fp8:
                return "skipped", "no --fp8 and no --distill-steps: student keeps proj_lin = 0 (block-sparse)"
            from lite3r.calibration import calibrate_fp8

            calibrate_fp8(state["student"], data, num_batches=len(data))
            return f"FP8 PTQ calibration on {described} of {frames_used} frames"

        def save():
            from lite3r.distill.checkpoint import save_student

            written = save_student(state["student"], stage_dir)
            return ", ".join(p.name for p in written)

        def export():
            from lite3r.distill.checkpoint import load_student
            from lite3r.exporter import PRECISIONS, export_onnx

            # The exporter takes the unquantized student and places FP8 Q/DQ from the scales, so the graph
            # carries exactly the saved artifacts: rebuild the student from them (in the export's precision).
            quant = stage_dir / "quant_state.json"
            plain_student = load_student(state["teacher"].cpu(), stage_dir, fp8=False).to(PRECISIONS[precision])
            if state["dense"]:
                restore_dense_attention(plain_student)
            report = export_onnx(
                plain_student,
                stage_dir / "model.onnx",
                image_size=state["size"],
                example_frames=frame_range.min,
                quant_state=quant if quant.exists() else None,
                precision=precision,
            )
            return str(report)

        def build():
            if target == "torch":
                return _build_pt2(state["teacher"], stage_dir, frame_range, state["size"], precision, dev, state["dense"])
            if target == "onnx":
                return "skipped", "no TensorRT installed (or --target onnx): no engine built; the ONNX is the artifact"
            from lite3r.deploy import build_engine

            report = build_engine(
                stage_dir / "model.onnx", stage_dir / "model.engine", target=target, frames=frame_range,
                image_size=state["size"], tf32=tf32,
            )
            state["engine"] = stage_dir / "model.engine"
            return report.summary()

        def parity():
            from lite3r.parity import check

            scenes, state["parity_seeds"] = held_out_scenes(counts, state["size"], parity_scenes, seed)
            names = [p.name for p in stage_dir.iterdir() if p.is_file()] + ["export_summary.json", "record.json"]
            student = state["student"].cpu()
            if state["dense"]:  # the artifacts' attention: parity compares like with like
                restore_dense_attention(student)
            result = check(
                stage_dir, scenes, student=student, teacher=state["teacher"].cpu(),
                onnx_path=stage_dir / "model.onnx", engine_path=state.get("engine"), engine_target=target,
                pt2_path=stage_dir / "model.pt2" if target == "torch" else None,
                artifacts=names, precision=precision, reconstruction_gate=reconstruction_gate,
            )
            summary.parity_passed = result.passed
            summary.parity_failures = result.failures()
            summary.parity_verdict = result.verdict
            return result.verdict

        for name, work in (
            ("load teacher", load),
            ("convert to SLA", convert),
            ("FP8 / distill", quantize),
            ("save student", save),
            ("export ONNX", export),
            ("build engine", build),
            ("parity", parity),
        ):
            stage(name, work)
        (stage_dir / "export_summary.json").write_text(json.dumps(_summary_json(summary), indent=2) + "\n")
        seeds = {"weights_and_calibration": seed, "parity_scenes": state["parity_seeds"],
                 "parity_noise_runs": export_gate(precision).noise_seeds}  # fmt: skip
        inputs = {"checkpoint": _input_file(checkpoint), "calib": None if calib is None else str(calib),
                  "onnxruntime_probe": onnxruntime_version}  # fmt: skip
        write_record(stage_dir, make_record(stage_dir, options=options, seeds=seeds, inputs=inputs))
        summary.artifacts = {p.name: p.stat().st_size for p in sorted(stage_dir.iterdir()) if p.is_file()}
    return summary


def recheck(folder: str | Path, out: str | Path) -> Any:
    """Run the parity of an export folder again from its ``record.json`` (same model, scenes, frame counts and
    gates) after checking that every recorded artifact is unchanged; writes the reports into ``out``."""
    import lite3r
    from lite3r.distill.checkpoint import load_student
    from lite3r.models import has_trained_weights
    from lite3r.parity import check
    from lite3r.parity import teacher_gate as make_teacher_gate

    folder = Path(folder)
    record = read_record(folder)
    o = record["options"]
    checkpoint = o.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ExportError(f"the recorded checkpoint {checkpoint} is not there any more")
    torch.manual_seed(o["seed"])
    teacher = lite3r.load_model(o["model_name"], checkpoint=checkpoint)
    student = load_student(teacher, folder)
    size = tuple(o["image_size"] or (teacher.family.image_size,) * 2)
    if _attention_for_profile(teacher, parse_frames(o["frames"]), size, o.get("dense_below", 0))[0]:
        restore_dense_attention(student)
    scenes, _ = held_out_scenes(frame_counts(parse_frames(o["frames"])), size, o["parity_scenes"], o["seed"])
    engine, pt2 = folder / "model.engine", folder / "model.pt2"
    return check(
        out, scenes, student=student, teacher=teacher, onnx_path=folder / "model.onnx",
        engine_path=engine if engine.is_file() else None, engine_target=o["target"],  # as built, not as here
        pt2_path=pt2 if pt2.is_file() else None,
        artifacts=list(record["artifacts"]) + ["record.json"], precision=o.get("precision"),
        reconstruction_gate=make_teacher_gate(
            o["teacher_gate"], trained_teacher=has_trained_weights(o["model_name"], checkpoint)
        ),
    )


def _input_file(path: str | Path | None) -> dict[str, Any] | None:
    return None if path is None else {"path": str(path), "bytes": Path(path).stat().st_size}


def _build_pt2(
    teacher, stage_dir: Path, frames, size: tuple[int, int], precision: str, device: torch.device, dense: bool
) -> str:
    """``model.pt2`` from the saved artifacts (float student + ``quant_state.json``), as the ONNX is built."""
    from lite3r.deploy.torch.pt2 import export_pt2
    from lite3r.distill.checkpoint import load_student
    from lite3r.exporter.export import PRECISIONS

    quant = stage_dir / "quant_state.json"
    student = load_student(teacher.cpu(), stage_dir, fp8=False)
    report = export_pt2(
        restore_dense_attention(student) if dense else student, stage_dir / "model.pt2", frames=frames, image_size=size,
        dtype=PRECISIONS[precision], quant_state=quant if quant.exists() else None, device=device,
    )  # fmt: skip
    return report.summary()


def _attention_for_profile(model: nn.Module, frames, size: tuple[int, int], dense_below: int) -> tuple[bool, str]:
    """Whether the artifacts of frame profile ``frames`` take exact attention (the whole profile below
    ``dense_below`` tokens, where ``TorchRuntime`` attends exactly too), and what the export report says about it.
    Static: an ONNX / engine / ``.pt2`` holds one attention for its whole profile, never a length branch; a profile
    across the crossover keeps SLA (docs/runtime.md)."""
    count = model.family.frame_tokens
    if not dense_below:
        return False, ""
    if count is None:
        return False, f"SLA at every length: the {model.family.name} family has no token count for --dense-below"
    shortest, longest = frames.min * count(*size), frames.max * count(*size)
    if longest < dense_below:
        return True, (f"exported with exact attention: the profile's longest sequence ({longest} tokens, "
                      f"{frames.max} frames) is below --dense-below {dense_below}, as TorchRuntime runs it")
    if shortest < dense_below:
        return False, (f"SLA at every length: the profile ({shortest}-{longest} tokens) crosses --dense-below "
                       f"{dense_below}, below which TorchRuntime attends exactly")
    return False, ""


def _summary_json(summary: ExportSummary) -> dict[str, Any]:
    return {
        "stages": [vars(s) for s in summary.stages],
        "parity_passed": summary.parity_passed,
        "parity_verdict": summary.parity_verdict,
        "parity_failures": summary.parity_failures,
    }
