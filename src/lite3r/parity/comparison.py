"""``check``: run teacher, student, ONNX model, engine and ``.pt2`` package on the same scenes and gate the differences.

Built on Polygraphy: ``Comparator.run`` runs each runner on the same feeds (one at a time, so a runner that
cannot start or run is one line in the report instead of a traceback), ``Comparator.compare_accuracy`` applies a
gate's per-output tolerances. The student is the reference for its exports (export gate, with the noise rule, see
``gates``) and the candidate against the teacher (reconstruction gate, plus depth/pose metrics
against the teacher's prediction). Exports are compared with the student in their own precision; the outputs are
those of the models' family (``model.family.outputs``). Results go to ``parity.json`` and ``parity.md``, which
list every artifact with its status (``lite3r.parity.artifacts``); ``ParityResult.passed`` is the overall verdict
and its ``verdict`` line says what it covers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lite3r._io import json_ready, staged_output
from lite3r.deploy.tensorrt.flavour import TensorRTNotInstalledError
from lite3r.deploy.torch.prepare import resolve_dtype
from lite3r.deploy.torch.pt2 import Pt2DeviceError, pt2_precision
from lite3r.models import ModelFamily, family_of
from lite3r.parity import gates
from lite3r.parity.artifacts import COMPARED, FAILED, NOT_RUN, ArtifactStatus, artifact_statuses
from lite3r.parity.gates import RECONSTRUCTION_GATE, Gate
from lite3r.parity.runners import (
    PerturbedTorchRunner, Pt2Runner, TorchRunner, TorchRuntimeRunner, engine_runner, feed_dicts, onnx_runner,
)  # fmt: skip

_STATS = ("max", "mean", "median", "quantile")
FLOAT32_NOISE = "student~fp32"  # runner name of the float32 student that measures a 16-bit precision's noise


@dataclass
class OutputParity:
    name: str
    passed: bool
    stat: str
    atol: float
    rtol: float
    absdiff: dict[str, float]  # worst value over scenes, per statistic
    reldiff: dict[str, float]
    noise_floor: float | None = None  # worst over scenes of the reference's own noise (the gate's noise rule)
    atol_used: float | None = None  # largest atol applied (the gate's + noise_factor x that scene's noise)

    def describe(self) -> str:
        atol = self.atol if self.atol_used is None else self.atol_used
        floor = "" if self.noise_floor is None else f", noise floor {self.noise_floor:.3g}"
        return (
            f"{self.name}: {self.stat} abs error {self.absdiff[self.stat]:.3g} (atol {atol:g}{floor}), "
            f"rel error {self.reldiff[self.stat]:.3g} (rtol {self.rtol:g})"
        )


@dataclass
class Comparison:
    candidate: str
    reference: str
    gate: str
    outputs: list[OutputParity]
    metrics: dict[str, float] = field(default_factory=dict)
    metric_limits: dict[str, float] = field(default_factory=dict)
    enforced: bool = True

    @property
    def failed_metrics(self) -> list[str]:
        return [k for k, limit in self.metric_limits.items() if self.metrics.get(k, math.nan) > limit]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and not self.failed_metrics

    def failures(self) -> list[str]:
        pair = f"{self.candidate} vs {self.reference}"
        lines = [f"{pair}: {o.describe()}" for o in self.outputs if not o.passed]
        lines += [f"{pair}: {k} {self.metrics[k]:.3g} > {self.metric_limits[k]:g}" for k in self.failed_metrics]
        return lines


@dataclass
class ParityResult:
    passed: bool
    comparisons: list[Comparison]
    scenes: int
    notes: list[str]
    json_path: Path
    md_path: Path
    artifacts: list[ArtifactStatus] = field(default_factory=list)
    frame_counts: list[int] = field(default_factory=list)
    precision: str = "fp32"  # of the exports, and of the student they are compared with

    def failures(self) -> list[str]:
        """What fails: an enforced gate, or a runner that could not start or run (informational comparisons are
        reported in the files only)."""
        lines = [line for c in self.comparisons if c.enforced for line in c.failures()]
        return lines + [a.describe() for a in self.artifacts if a.status == FAILED]

    @property
    def verdict(self) -> str:
        """One line: the verdict and exactly what it covers (and what was not run)."""
        covered = [f"{c.candidate} vs {c.reference} ({c.gate} gate{'' if c.enforced else ', informational'})"
                   for c in self.comparisons]  # fmt: skip
        line = f"{'PASSED' if self.passed else 'FAILED'}: " + ("; ".join(covered) or "nothing was compared")
        frames = "/".join(map(str, self.frame_counts))
        line += f" on {self.scenes} scene(s)" + (f" of {frames} frames" if frames else "")
        not_run = [a.name for a in self.artifacts if a.status == NOT_RUN]
        failed = [a.name for a in self.artifacts if a.status == FAILED]
        if failed:
            line += f"; failed to run: {', '.join(failed)}"
        if not_run:
            line += f"; not run: {', '.join(not_run)}"
        return line


def _worst(per_scene: Sequence[Any], kind: str) -> dict[str, float]:
    """Worst value over scenes of each error statistic Polygraphy computed (``quantile`` only when checked)."""
    values = {s: [getattr(r, f"{s}_{kind}") for r in per_scene] for s in _STATS}
    return {s: max(map(float, v)) for s, v in values.items() if None not in v}


def _output_parity(
    name: str, gate: Gate, per_scene: Sequence[Any], floors: Sequence[float] | None, atols: Sequence[float]
) -> OutputParity:
    tol = gate.tolerances[name]
    passed = all(bool(r) for r in per_scene)
    absdiff, reldiff = _worst(per_scene, "absdiff"), _worst(per_scene, "reldiff")
    floor = None if floors is None else max(floors)
    return OutputParity(name, passed, tol.stat, tol.atol, tol.rtol, absdiff, reldiff, floor, max(atols))


def _statistic(error: np.ndarray, gate: Gate, name: str) -> float:
    tol = gate.tolerances[name]
    if tol.stat == "quantile":
        return float(np.quantile(error, tol.quantile))
    return float({"max": np.max, "mean": np.mean, "median": np.median}[tol.stat](error))


def _noise_floors(
    run_results: Any, reference: str, gate: Gate, outputs: Sequence[str]
) -> list[dict[str, float]] | None:
    """Per scene and output: the gate's statistic of the reference's own noise, its change in its noise runs (the
    runners named ``<reference>~...``: perturbed, or the float32 student), worst run; None without noise runs."""
    noisy = [name for name in run_results.keys() if name.startswith(f"{reference}~")]
    if gate.noise is None or not noisy:
        return None
    floors = []
    for i, base in enumerate(run_results[reference]):
        floors.append({
            name: max(_statistic(np.abs(run_results[p][i][name] - base[name]), gate, name) for p in noisy)
            for name in outputs
        })  # fmt: skip
    return floors


def _compare(run_results: Any, candidate: str, reference: str, gate: Gate, outputs: Sequence[str]) -> Comparison:
    """``candidate`` against ``reference`` on ``outputs``, one scene at a time: the gate's noise rule sets each
    scene's atol (``atol + noise_factor x noise``)."""
    from polygraphy.comparator import Comparator, RunResults

    missing = {runner: sorted(set(outputs) - set(run_results[runner][0])) for runner in (candidate, reference)}
    missing = {runner: absent for runner, absent in missing.items() if absent}
    if missing:
        raise ValueError(f"outputs missing (official names {list(outputs)}): {missing}")
    floors = _noise_floors(run_results, reference, gate, outputs)
    per_scene, atols = [], []
    for i in range(len(run_results[reference])):
        noise = floors[i] if floors else dict.fromkeys(outputs, 0.0)
        atol = {name: gate.tolerances[name].atol + gate.noise_factor * noise[name] for name in outputs}
        pair = RunResults()
        pair[candidate], pair[reference] = [run_results[candidate][i]], [run_results[reference][i]]
        [accuracy] = Comparator.compare_accuracy(pair, comparisons=[(0, 1)], compare_func=gate.compare_func(atol))
        per_scene.append(accuracy[(candidate, reference)][0])
        atols.append(atol)
    parities = [
        _output_parity(
            name, gate, [scene[name] for scene in per_scene],
            None if floors is None else [f[name] for f in floors], [a[name] for a in atols],
        )
        for name in outputs
    ]  # fmt: skip
    return Comparison(
        candidate, reference, gate.name, parities, metric_limits=dict(gate.metric_limits), enforced=gate.enforced
    )


def metrics_against_teacher(
    student: dict[str, np.ndarray], teacher: dict[str, np.ndarray], family: ModelFamily
) -> dict[str, float]:
    """Depth AbsRel / delta and relative camera-pose errors of one scene, the teacher's prediction as truth."""
    from lite3r.metrics import depth_metrics, relative_pose_errors

    student, teacher = ({k: torch.from_numpy(v).double() for k, v in out.items()} for out in (student, teacher))
    pred_depth, true_depth = (family.depth(out)[0] for out in (student, teacher))
    size = tuple(true_depth.shape[-2:])
    extrinsics = [family.cameras(out, size)[0][0] for out in (student, teacher)]
    return depth_metrics(pred_depth, true_depth, true_depth > 0) | relative_pose_errors(*extrinsics)


def _mean_metrics(run_results: Any, candidate: str, reference: str, family: ModelFamily) -> dict[str, float]:
    pairs = zip(run_results[candidate], run_results[reference])
    scenes = [metrics_against_teacher(c, r, family) for c, r in pairs]
    return {k: float(np.mean([s[k] for s in scenes])) for k in scenes[0]}


def _precision(student: torch.nn.Module | None, onnx_path: str | os.PathLike | None, packaged: str | None) -> str:
    """The artifacts' precision: the ONNX file's recorded one, else the package's (``packaged``), else the
    student's, else float32."""
    from lite3r.exporter.export import graph_precision, precision_of

    recorded = None
    if onnx_path is not None and Path(onnx_path).is_file():
        with contextlib.suppress(Exception):  # an unreadable file fails in its runner, with one line
            recorded = graph_precision(onnx_path)
    if recorded:
        return recorded
    if packaged is not None:
        return packaged
    dtypes = {p.dtype for p in student.parameters()} if student is not None else set()
    return (precision_of(dtypes.pop()) if len(dtypes) == 1 else None) or "fp32"


def _markdown(result: ParityResult) -> str:
    lines = [f"# Parity: {result.verdict}", ""]
    if result.artifacts:
        lines += ["| artifact | status | detail |", "|---|---|---|"]
        lines += [f"| {a.name} | {a.status} | {a.detail} |" for a in result.artifacts]
        lines.append("")
    for c in result.comparisons:
        floors = any(o.noise_floor is not None for o in c.outputs)
        lines += [
            f"## {c.candidate} vs {c.reference} ({c.gate} gate): {'passed' if c.passed else 'FAILED'}"
            + ("" if c.enforced else " (informational: not gating)"),
            "",
            "| output | check | abs error | atol |" + (" noise floor |" if floors else "") + " rel error | rtol | |",
            "|---|---|---|---|" + ("---|" if floors else "") + "---|---|---|",
        ]
        lines += [
            f"| {o.name} | {o.stat} | {o.absdiff[o.stat]:.3g} | {o.atol_used or o.atol:g} |"
            + (f" {o.noise_floor:.3g} |" if floors else "")
            + f" {o.reldiff[o.stat]:.3g} | {o.rtol:g} | {'ok' if o.passed else 'FAIL'} |"
            for o in c.outputs
        ]
        if c.metrics:
            lines += ["", "| metric vs teacher | value | limit | |", "|---|---|---|---|"]
            for k, v in c.metrics.items():
                limit = c.metric_limits.get(k)
                verdict = "" if limit is None else ("FAIL" if k in c.failed_metrics else "ok")
                lines.append(f"| {k} | {v:.4g} | {'' if limit is None else f'{limit:g}'} | {verdict} |")
        lines.append("")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines).rstrip() + "\n"


def _json(result: ParityResult) -> str:
    data = {
        "passed": result.passed,
        "verdict": result.verdict,
        "scenes": result.scenes,
        "frame_counts": result.frame_counts,
        "precision": result.precision,
        "failures": result.failures(),
        "artifacts": [asdict(a) for a in result.artifacts],
        "comparisons": [asdict(c) | {"passed": c.passed} for c in result.comparisons],
        "notes": result.notes,
    }
    return json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n"


def check(
    out_dir: str | os.PathLike,
    scenes: Iterable[torch.Tensor | np.ndarray],
    *,
    student: torch.nn.Module | None = None,
    teacher: torch.nn.Module | None = None,
    onnx_path: str | os.PathLike | None = None,
    engine_path: str | os.PathLike | None = None,
    engine_target: str = "tensorrt",
    pt2_path: str | os.PathLike | None = None,
    runtime: Any = None,
    artifacts: Iterable[str] | None = None,
    precision: str | None = None,
    export_gate: Gate | None = None,
    reconstruction_gate: Gate = RECONSTRUCTION_GATE,
) -> ParityResult:
    """Compare what is given on ``scenes`` (image tensors ``[S, 3, H, W]``) and write the reports to ``out_dir``.

    Comparisons: ONNX, engine and ``.pt2`` package vs student (``export_gate``), student vs teacher
    (``reconstruction_gate`` and its metric limits), on the outputs of the models' family. ``precision``: that of
    the ONNX model, engine and package, by default the ONNX file's recorded one, else the package's, else the
    student's (a package of another precision is refused before anything runs); the student is compared
    in it (a converted copy when its own differs; the caller's model is untouched), and ``export_gate`` defaults to
    ``gates.export_gate(precision)``, whose noise rule runs the student again (perturbed, or in float32 for a
    16-bit precision). A datacenter TensorRT engine runs where ``tensorrt`` imports; a TensorRT-RTX engine
    (``engine_target="tensorrt-rtx"``) has no runner: it is listed as not run, with the reason. ``artifacts``: file
    names of the output folder to list with their status (by default the ONNX, engine and package given). A runner
    that fails to start or run fails the check with one line; at least one comparison must be possible.

    ``runtime``: a :class:`lite3r.deploy.torch.TorchRuntime` of the student (16-bit, compiled, CUDA graphs, FP8
    GEMMs as built), compared with the student under the export gate of its dtype. Its dense fallback and 8-bit
    attention scores are part of what it computes, so the student (and its noise runs) take the runtime's
    ``dense_below`` and ``qk_codes`` too, on a copy; the artifacts, which run SLA at every length in 16 bits, are
    then compared in a check of their own (refused here).
    """
    from polygraphy.logger import G_LOGGER

    from lite3r.exporter.export import PRECISIONS, as_dtype

    feeds = feed_dicts(scenes)
    notes: list[str] = []
    if runtime is not None:
        student, runtime_precision = _runtime_reference(runtime, student, onnx_path or engine_path or pt2_path)
        if precision not in (None, runtime_precision):
            raise ValueError(f"the runtime computes in {runtime_precision}; parity here runs in {precision}")
        precision = runtime_precision
    packaged = None if pt2_path is None else pt2_precision(pt2_path)  # read once: it may load the package
    precision = precision or _precision(student, onnx_path, packaged)
    if packaged is not None and packaged != precision:
        raise ValueError(f"{pt2_path} computes in {packaged}; parity here runs in {precision} (pass precision=)")
    export_gate = export_gate or gates.export_gate(precision)
    if precision != "fp32" and onnx_path is not None:
        notes.append(
            f"onnx: each op ONNX Runtime's CPU provider has no {precision} kernel for ran in float32 with its result "
            f"rounded to {precision} (lite3r.parity.ort_16bit)"
        )
    runs: dict[str, ArtifactStatus] = {}  # file name -> what its runner did
    runners: list[tuple[Any, str | None]] = []  # (runner, the file it runs)
    runnable_engine = engine_path is not None and engine_target != "tensorrt-rtx"
    if student is not None:
        runners.append((TorchRunner(as_dtype(student, PRECISIONS[precision]), "student"), None))
        if onnx_path is not None or runnable_engine or pt2_path is not None or runtime is not None:
            runners += [(runner, None) for runner in _noise_runners(runners[0][0].model, student, export_gate)]
    if teacher is not None:
        runners.append((TorchRunner(teacher, "teacher"), None))
    if onnx_path is not None:
        runners.append((lambda: onnx_runner(Path(onnx_path)), Path(onnx_path).name))
    if engine_path is not None:
        engine = Path(engine_path).name
        if engine_target == "tensorrt-rtx":
            runs[engine] = ArtifactStatus(engine, NOT_RUN, "TensorRT-RTX engine: built, but lite3r and Polygraphy "
                                          "have no TensorRT-RTX runner, so it cannot run on this machine")  # fmt: skip
        else:
            runners.append((lambda: engine_runner(Path(engine_path)), engine))
    if pt2_path is not None:
        runners.append((Pt2Runner(pt2_path), Path(pt2_path).name))
    if runtime is not None:
        runners.append((TorchRuntimeRunner(runtime), None))
    run_results = _run_each(runners, feeds, runs)
    names = set(run_results.keys())
    candidates = ("onnx", "tensorrt", "pt2", "runtime")
    plan = [(c, "student", export_gate) for c in candidates if c in names and "student" in names]
    if {"student", "teacher"} <= names:
        plan.append(("student", "teacher", reconstruction_gate))
    if not plan and not any(a.status == FAILED for a in runs.values()):
        raise ValueError("parity needs a student and at least one of: teacher, onnx_path, engine_path, pt2_path, "
                         "runtime")

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the verdicts are reported here, not logged
        family = family_of(student if student is not None else teacher)
        comparisons = [_compare(run_results, cand, ref, gate, family.outputs) for cand, ref, gate in plan]
    for c in comparisons:
        if c.gate == reconstruction_gate.name:
            c.metrics = _mean_metrics(run_results, c.candidate, c.reference, family)
    for c in comparisons:
        file = {"onnx": onnx_path, "tensorrt": engine_path, "pt2": pt2_path}.get(c.candidate)
        if file is not None:
            worst = max(c.outputs, key=lambda o: o.absdiff[o.stat] / (o.atol_used or o.atol))
            runs[Path(file).name] = ArtifactStatus(
                Path(file).name, COMPARED,
                f"vs student, {c.gate} gate {'passed' if c.passed else 'FAILED'}; closest to its limit: "
                f"{worst.describe()}",
            )  # fmt: skip

    out_dir = Path(out_dir)
    listed = set(runs) if artifacts is None else set(artifacts) | set(runs)
    result = ParityResult(
        passed=bool(comparisons)
        and all(c.passed for c in comparisons if c.enforced)
        and not any(a.status == FAILED for a in runs.values()),
        comparisons=comparisons,
        scenes=len(feeds),
        notes=notes,
        json_path=out_dir / "parity.json",
        md_path=out_dir / "parity.md",
        artifacts=artifact_statuses(listed, runs, has_student=student is not None),
        frame_counts=sorted({int(feed["images"].shape[1]) for feed in feeds}),
        precision=precision,
    )
    with staged_output(out_dir, writer="parity") as stage:
        (stage / "parity.json").write_text(_json(result))
        (stage / "parity.md").write_text(_markdown(result))
    return result


def _runtime_reference(runtime: Any, student: torch.nn.Module | None, artifact: Any) -> tuple[torch.nn.Module, str]:
    """The student as ``runtime`` runs it (its ``dense_below`` and ``qk_codes``; a copy, the caller's model is
    untouched) and the runtime's precision."""
    import copy

    from lite3r.exporter.export import precision_of
    from lite3r.sla.module import set_runtime_settings

    if student is None:
        raise ValueError("runtime parity compares the runtime with its float student: pass student=")
    dense_below, qk_codes = runtime.options.dense_below, runtime.options.qk_codes
    if dense_below and artifact is not None:
        raise ValueError(f"the runtime attends exactly below {dense_below} tokens and the artifacts never do: "
                         "check them in separate calls (or build the runtime with dense_below=0)")
    if qk_codes and artifact is not None:
        raise ValueError(f"the runtime scores attention with {qk_codes} codes and the artifacts never do: check them "
                         "in separate calls (or build the runtime with qk_codes=None)")
    if dense_below or qk_codes:
        student = set_runtime_settings(copy.deepcopy(student), dense_below=dense_below, qk_codes=qk_codes)
    return student, precision_of(resolve_dtype(runtime.options.dtype))


def _noise_runners(student: torch.nn.Module, float32_student: torch.nn.Module, gate: Gate) -> list[TorchRunner]:
    """The runs of ``student`` (in the artifacts' precision) that measure its noise for ``gate``'s noise rule:
    seeded perturbed runs, or the float32 student (``float32_student``, the caller's model)."""
    from lite3r.exporter.export import as_dtype

    if gate.noise == "perturbed":
        return [PerturbedTorchRunner(student, f"student~{k}", gate.noise_scale, seed=k) for k in gate.noise_seeds]
    if gate.noise == "float32":
        return [TorchRunner(as_dtype(float32_student, torch.float32), FLOAT32_NOISE)]
    return []


def _run_each(runners: list[tuple[Any, str | None]], feeds: list, runs: dict[str, ArtifactStatus]) -> Any:
    """``Comparator.run`` on one runner at a time; a file whose runner cannot be made, started or run gets a
    FAILED (or, for a missing TensorRT or CUDA GPU, NOT_RUN) status instead of ending the check."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.logger import G_LOGGER

    results = RunResults()
    for runner, file in runners:
        try:
            with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
                made = runner() if callable(runner) and not hasattr(runner, "infer") else runner
                for name, iterations in Comparator.run([made], data_loader=feeds).items():
                    results[name] = iterations
        except (TensorRTNotInstalledError, Pt2DeviceError) as e:
            runs[file] = ArtifactStatus(file, NOT_RUN, f"cannot run on this machine: {e}")
        except Exception as e:  # onnxruntime, TensorRT and Polygraphy raise their own types; report, never crash
            if file is None:
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            runs[file] = ArtifactStatus(file, FAILED, reason)
    return results
