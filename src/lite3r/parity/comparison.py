"""``check``: run teacher, student, ONNX model, engine and ``.pt2`` package on the same scenes and gate the differences.

Built on Polygraphy: ``Comparator.run`` runs every runner on the same feeds, ``Comparator.compare_accuracy``
applies a gate's per-output tolerances. The student is the reference for its exports (export gate) and the
candidate against the teacher (reconstruction gate, plus depth/pose metrics against the teacher's prediction).
Results go to ``parity.json`` and ``parity.md``; ``ParityResult.passed`` is the overall verdict.
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

from lite3r._io import json_ready, staged_output
from lite3r.deploy._trt import TensorRTNotInstalledError
from lite3r.models import ModelFamily, family_of
from lite3r.parity import gates
from lite3r.parity.gates import RECONSTRUCTION_GATE, Gate
from lite3r.deploy.torch.pt2 import pt2_precision
from lite3r.parity.runners import Pt2Runner, TorchRunner, engine_runner, feed_dicts, onnx_runner

_STATS = ("max", "mean", "median", "quantile")
NOISE_REFERENCE = "student-fp32"  # runner name of the float32 student that measures a precision's rounding noise


@dataclass
class OutputParity:
    name: str
    passed: bool
    stat: str
    atol: float
    rtol: float
    absdiff: dict[str, float]  # worst value over scenes, per statistic
    reldiff: dict[str, float]

    def describe(self) -> str:
        return (
            f"{self.name}: {self.stat} abs error {self.absdiff[self.stat]:.3g} (atol {self.atol:g}), "
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

    def failures(self) -> list[str]:
        """What fails an enforced gate (informational comparisons are reported in the files only)."""
        return [line for c in self.comparisons if c.enforced for line in c.failures()]


def _worst(per_scene: Sequence[Any], kind: str) -> dict[str, float]:
    """Worst value over scenes of each error statistic Polygraphy computed (``quantile`` only when checked)."""
    values = {s: [getattr(r, f"{s}_{kind}") for r in per_scene] for s in _STATS}
    return {s: max(map(float, v)) for s, v in values.items() if None not in v}


def _output_parity(name: str, gate: Gate, per_scene: Sequence[Any]) -> OutputParity:
    tol = gate.tolerances[name]
    passed = all(bool(r) for r in per_scene)
    absdiff, reldiff = _worst(per_scene, "absdiff"), _worst(per_scene, "reldiff")
    return OutputParity(name, passed, tol.stat, tol.atol, tol.rtol, absdiff, reldiff)


def _compare(run_results: Any, candidate: str, reference: str, gate: Gate, outputs: Sequence[str]) -> Comparison:
    from polygraphy.comparator import Comparator

    names = list(run_results.keys())
    missing = {runner: sorted(set(outputs) - set(run_results[runner][0])) for runner in (candidate, reference)}
    missing = {runner: absent for runner, absent in missing.items() if absent}
    if missing:
        raise ValueError(f"outputs missing (official names {list(outputs)}): {missing}")
    pair = (names.index(candidate), names.index(reference))
    [accuracy] = Comparator.compare_accuracy(run_results, comparisons=[pair], compare_func=gate.compare_func())
    per_scene = accuracy[(candidate, reference)]
    parities = [_output_parity(name, gate, [scene[name] for scene in per_scene]) for name in outputs]
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


def _precision(
    student: torch.nn.Module | None, onnx_path: str | os.PathLike | None, pt2_path: str | os.PathLike | None
) -> str:
    """The artifacts' precision: the ONNX file's recorded one, else the package's, else the student's, else float32."""
    from lite3r.exporter.export import graph_precision, precision_of

    if onnx_path is not None and Path(onnx_path).is_file() and (recorded := graph_precision(onnx_path)):
        return recorded
    if pt2_path is not None:
        return pt2_precision(pt2_path)
    dtypes = {p.dtype for p in student.parameters()} if student is not None else set()
    return (precision_of(dtypes.pop()) if len(dtypes) == 1 else None) or "fp32"


def _markdown(result: ParityResult) -> str:
    lines = [f"# Parity: {'PASSED' if result.passed else 'FAILED'}", "", f"{result.scenes} scene(s).", ""]
    for c in result.comparisons:
        lines += [
            f"## {c.candidate} vs {c.reference} ({c.gate} gate): {'passed' if c.passed else 'FAILED'}"
            + ("" if c.enforced else " (informational: not gating)"),
            "",
            "| output | check | abs error | atol | rel error | rtol | |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {o.name} | {o.stat} | {o.absdiff[o.stat]:.3g} | {o.atol:g} | {o.reldiff[o.stat]:.3g} | {o.rtol:g} "
            f"| {'ok' if o.passed else 'FAIL'} |"
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
        "scenes": result.scenes,
        "failures": result.failures(),
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
    pt2_path: str | os.PathLike | None = None,
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
    ``gates.export_gate(precision)``. A 16-bit gate is widened by the student's own rounding noise, measured against
    the float32 student (also reported). The engine needs datacenter TensorRT; without it the engine is skipped with
    a note. At least one comparison must be possible.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    from lite3r.exporter.export import PRECISIONS, as_dtype

    feeds = feed_dicts(scenes)
    notes: list[str] = []
    precision = precision or _precision(student, onnx_path, pt2_path)
    if pt2_path is not None and (packaged := pt2_precision(pt2_path)) != precision:
        raise ValueError(f"{pt2_path} computes in {packaged}; parity here runs in {precision} (pass precision=)")
    export_gate = export_gate or gates.export_gate(precision)
    if precision != "fp32" and onnx_path is not None:
        notes.append(
            f"onnx: each op ONNX Runtime's CPU provider has no {precision} kernel for ran in float32 with its result "
            f"rounded to {precision} (lite3r.parity.ort_16bit)"
        )
    runners = []
    if student is not None:
        runners.append(TorchRunner(as_dtype(student, PRECISIONS[precision]), "student"))
    if teacher is not None:
        runners.append(TorchRunner(teacher, "teacher"))
    if onnx_path is not None:
        runners.append(onnx_runner(Path(onnx_path)))
    if engine_path is not None:
        try:
            runners.append(engine_runner(Path(engine_path)))
        except TensorRTNotInstalledError as e:
            notes.append(f"engine {engine_path} not compared: {e}")
    if pt2_path is not None:
        runners.append(Pt2Runner(pt2_path))
    names = {r.name for r in runners}
    plan = [(c, "student", export_gate) for c in ("onnx", "tensorrt", "pt2") if c in names and "student" in names]
    if {"student", "teacher"} <= names:
        plan.append(("student", "teacher", reconstruction_gate))
    if not plan:
        raise ValueError("parity needs a student and at least one of: teacher, onnx_path, engine_path, pt2_path")
    family = family_of(student if student is not None else teacher)
    measure_noise = export_gate.noise_factor > 0 and any(gate is export_gate for *_, gate in plan)
    if measure_noise:
        runners.append(TorchRunner(as_dtype(student, torch.float32), NOISE_REFERENCE))

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the verdicts are reported here, not logged
        run_results = Comparator.run(runners, data_loader=feeds)
        comparisons = []
        if measure_noise:
            noise = _compare(run_results, "student", NOISE_REFERENCE, gates.noise_gate(export_gate), family.outputs)
            comparisons.append(noise)
            widened = export_gate.widened({o.name: o.absdiff[o.stat] for o in noise.outputs})
            plan = [(cand, ref, widened if gate is export_gate else gate) for cand, ref, gate in plan]
        comparisons += [_compare(run_results, cand, ref, gate, family.outputs) for cand, ref, gate in plan]
    for c in comparisons:
        if c.gate == reconstruction_gate.name:
            c.metrics = _mean_metrics(run_results, c.candidate, c.reference, family)

    out_dir = Path(out_dir)
    result = ParityResult(
        passed=all(c.passed for c in comparisons if c.enforced),
        comparisons=comparisons,
        scenes=len(feeds),
        notes=notes,
        json_path=out_dir / "parity.json",
        md_path=out_dir / "parity.md",
    )
    with staged_output(out_dir) as stage:
        (stage / "parity.json").write_text(_json(result))
        (stage / "parity.md").write_text(_markdown(result))
    return result
