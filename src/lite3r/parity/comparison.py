"""``check``: run teacher, student, ONNX model and engine on the same scenes and gate the differences.

Built on Polygraphy: ``Comparator.run`` runs each runner on the same feeds (one at a time, so a runner that
cannot start or run is one line in the report instead of a traceback), ``Comparator.compare_accuracy`` applies a
gate's per-output tolerances. The student is the reference for its exports (export gate, with the student's own
noise floor, see ``gates``) and the candidate against the teacher (reconstruction gate, plus depth/pose metrics
against the teacher's prediction). Results go to ``parity.json`` and ``parity.md``, which list every artifact
with its status (``lite3r.parity.artifacts``); ``ParityResult.passed`` is the overall verdict and its
``verdict`` line says what it covers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lite3r._io import staged_output
from lite3r.deploy._trt import TensorRTNotInstalledError
from lite3r.parity.artifacts import COMPARED, FAILED, NOT_RUN, ArtifactStatus, artifact_statuses
from lite3r.parity.gates import EXPORT_GATE, OUTPUT_NAMES, RECONSTRUCTION_GATE, Gate
from lite3r.parity.runners import PerturbedTorchRunner, TorchRunner, engine_runner, feed_dicts, onnx_runner

_STATS = ("max", "mean", "median", "quantile")


@dataclass
class OutputParity:
    name: str
    passed: bool
    stat: str
    atol: float
    rtol: float
    absdiff: dict[str, float]  # worst value over scenes, per statistic
    reldiff: dict[str, float]
    noise_floor: float | None = None  # worst over scenes of the reference's own change under float noise
    atol_used: float | None = None  # largest atol applied (the gate's, or twice the noise floor)

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


def _noise_floors(run_results: Any, reference: str, gate: Gate) -> list[dict[str, float]] | None:
    """Per scene and output: the gate's statistic of the reference's change under its perturbed runs (worst run)."""
    perturbed = [name for name in run_results.keys() if name.startswith(f"{reference}~")]
    if not perturbed:
        return None
    floors = []
    for i, base in enumerate(run_results[reference]):
        floors.append({
            name: max(_statistic(np.abs(run_results[p][i][name] - base[name]), gate, name) for p in perturbed)
            for name in OUTPUT_NAMES
        })  # fmt: skip
    return floors


def _compare(run_results: Any, candidate: str, reference: str, gate: Gate) -> Comparison:
    from polygraphy.comparator import Comparator, RunResults

    missing = {runner: sorted(set(OUTPUT_NAMES) - set(run_results[runner][0])) for runner in (candidate, reference)}
    missing = {runner: absent for runner, absent in missing.items() if absent}
    if missing:
        raise ValueError(f"outputs missing (official names {list(OUTPUT_NAMES)}): {missing}")
    floors = _noise_floors(run_results, reference, gate)
    per_scene, atols = [], []
    for i in range(len(run_results[reference])):  # one scene at a time: the noise floor sets each scene's atol
        atol = {name: max(gate.tolerances[name].atol, gate.noise_factor * floors[i][name]) for name in OUTPUT_NAMES} \
            if floors else {name: gate.tolerances[name].atol for name in OUTPUT_NAMES}  # fmt: skip
        pair = RunResults()
        pair[candidate], pair[reference] = [run_results[candidate][i]], [run_results[reference][i]]
        [accuracy] = Comparator.compare_accuracy(pair, comparisons=[(0, 1)], compare_func=gate.compare_func(atol))
        per_scene.append(accuracy[(candidate, reference)][0])
        atols.append(atol)
    outputs = [
        _output_parity(
            name, gate, [scene[name] for scene in per_scene],
            None if floors is None else [f[name] for f in floors], [a[name] for a in atols],
        )
        for name in OUTPUT_NAMES
    ]  # fmt: skip
    return Comparison(
        candidate, reference, gate.name, outputs, metric_limits=dict(gate.metric_limits), enforced=gate.enforced
    )


def metrics_against_teacher(student: dict[str, np.ndarray], teacher: dict[str, np.ndarray]) -> dict[str, float]:
    """Depth AbsRel / delta and relative camera-pose errors of one scene, the teacher's prediction as truth."""
    from lite3r.geometry import pose_encoding_to_extri_intri
    from lite3r.metrics import depth_metrics, relative_pose_errors

    pred_depth, true_depth = (torch.from_numpy(d[0, ..., 0]).double() for d in (student["depth"], teacher["depth"]))
    size = tuple(true_depth.shape[-2:])
    extrinsics = [
        pose_encoding_to_extri_intri(torch.from_numpy(p[0]).double(), size)[0]
        for p in (student["pose_enc"], teacher["pose_enc"])
    ]
    return depth_metrics(pred_depth, true_depth, true_depth > 0) | relative_pose_errors(*extrinsics)


def _mean_metrics(run_results: Any, candidate: str, reference: str) -> dict[str, float]:
    scenes = [metrics_against_teacher(c, r) for c, r in zip(run_results[candidate], run_results[reference])]
    return {k: float(np.mean([s[k] for s in scenes])) for k in scenes[0]}


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


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric undefined for the scenes (pose errors of a single frame) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(result: ParityResult) -> str:
    data = {
        "passed": result.passed,
        "verdict": result.verdict,
        "scenes": result.scenes,
        "frame_counts": result.frame_counts,
        "failures": result.failures(),
        "artifacts": [asdict(a) for a in result.artifacts],
        "comparisons": [asdict(c) | {"passed": c.passed} for c in result.comparisons],
        "notes": result.notes,
    }
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def check(
    out_dir: str | os.PathLike,
    scenes: Iterable[torch.Tensor | np.ndarray],
    *,
    student: torch.nn.Module | None = None,
    teacher: torch.nn.Module | None = None,
    onnx_path: str | os.PathLike | None = None,
    engine_path: str | os.PathLike | None = None,
    engine_target: str = "tensorrt",
    artifacts: Iterable[str] | None = None,
    export_gate: Gate = EXPORT_GATE,
    reconstruction_gate: Gate = RECONSTRUCTION_GATE,
) -> ParityResult:
    """Compare what is given on ``scenes`` (image tensors ``[S, 3, H, W]``) and write the reports to ``out_dir``.

    Comparisons: ONNX vs student and engine vs student (``export_gate``), student vs teacher
    (``reconstruction_gate`` and its metric limits). A datacenter TensorRT engine runs where ``tensorrt`` imports;
    a TensorRT-RTX engine (``engine_target="tensorrt-rtx"``) has no runner: it is listed as not run, with the
    reason. ``artifacts``: file names of the output folder to list with their status (by default the ONNX and
    engine given). A runner that fails to start or run fails the check with one line; at least one comparison
    must be possible.
    """
    from polygraphy.logger import G_LOGGER

    feeds = feed_dicts(scenes)
    notes: list[str] = []
    runs: dict[str, ArtifactStatus] = {}  # file name -> what its runner did
    runners: list[tuple[Any, str | None]] = []  # (runner, the file it runs)
    runnable_engine = engine_path is not None and engine_target != "tensorrt-rtx"
    if student is not None:
        runners.append((TorchRunner(student, "student"), None))
        runners += [(PerturbedTorchRunner(student, f"student~{k}", export_gate.noise_scale, seed=k), None)
                    for k in range(export_gate.noise_runs) if onnx_path is not None or runnable_engine]  # fmt: skip
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
    run_results = _run_each(runners, feeds, runs)
    names = set(run_results.keys())
    plan = [(c, "student", export_gate) for c in ("onnx", "tensorrt") if c in names and "student" in names]
    if {"student", "teacher"} <= names:
        plan.append(("student", "teacher", reconstruction_gate))
    if not plan and not any(a.status == FAILED for a in runs.values()):
        raise ValueError("parity needs a student and at least one of: teacher, onnx_path, engine_path")

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the verdicts are reported here, not logged
        comparisons = [_compare(run_results, cand, ref, gate) for cand, ref, gate in plan]
    for c in comparisons:
        if c.gate == reconstruction_gate.name:
            c.metrics = _mean_metrics(run_results, c.candidate, c.reference)
    for c in comparisons:
        file = {"onnx": onnx_path, "tensorrt": engine_path}.get(c.candidate)
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
    )
    with staged_output(out_dir, writer="parity") as stage:
        (stage / "parity.json").write_text(_json(result))
        (stage / "parity.md").write_text(_markdown(result))
    return result


def _run_each(runners: list[tuple[Any, str | None]], feeds: list, runs: dict[str, ArtifactStatus]) -> Any:
    """``Comparator.run`` on one runner at a time; a file whose runner cannot be made, started or run gets a
    FAILED (or, for a missing TensorRT, NOT_RUN) status instead of ending the check."""
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.logger import G_LOGGER

    results = RunResults()
    for runner, file in runners:
        try:
            with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
                made = runner() if callable(runner) and not hasattr(runner, "infer") else runner
                for name, iterations in Comparator.run([made], data_loader=feeds).items():
                    results[name] = iterations
        except TensorRTNotInstalledError as e:
            runs[file] = ArtifactStatus(file, NOT_RUN, f"cannot run on this machine: {e}")
        except Exception as e:  # onnxruntime, TensorRT and Polygraphy raise their own types; report, never crash
            if file is None:
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            runs[file] = ArtifactStatus(file, FAILED, reason)
    return results
