"""Parity gates: per-output tolerances and metric limits, defined once.

Two questions, two gates (docs/deploy.md has the reasoning):

* ``EXPORT_GATES`` (tight, one per precision): does an exported artifact (ONNX, engine) compute what the PyTorch
  student in the same precision computes? Same math, so differences are rounding noise of that precision. The
  99.9th percentile of the error is checked rather than its maximum because an FP8 graph may round a handful of
  activations to the neighbouring FP8 value where the fake-quantised student does not; a real export bug moves
  far more than 0.1 % of the elements. Confidences are ``1 + exp(x)``: their relative error is the absolute
  error of ``x``. ``EXPORT_GATE`` is the float32 one.
* ``RECONSTRUCTION_GATE`` (loose): is the student (SLA, FP8) still a good stand-in for the dense teacher?
  Median errors per output, plus reconstruction metrics of the student against the teacher's prediction:
  depth AbsRel and the relative camera-pose errors (``lite3r.metrics``).

Polygraphy semantics: an output fails when the chosen statistic of the absolute error exceeds ``atol`` *and*
that of the relative error (relative to the reference) exceeds ``rtol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

OUTPUT_NAMES = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
Statistic = Literal["max", "mean", "median", "quantile"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    stat: Statistic = "max"
    quantile: float = 0.999  # used when stat == "quantile"


@dataclass(frozen=True)
class Gate:
    name: str
    tolerances: Mapping[str, Tolerance]
    metric_limits: Mapping[str, float] = field(default_factory=dict)  # metric name -> largest passing value
    # False: measured and reported, but a failure does not fail the check (e.g. a random-weight teacher, whose
    # outputs are no reconstruction a student could be held to).
    enforced: bool = True

    def compare_func(self) -> Any:
        """Polygraphy ``SimpleCompareFunc`` with this gate's per-output tolerances."""
        from polygraphy.comparator import SimpleCompareFunc

        tol = self.tolerances
        return SimpleCompareFunc(
            atol={k: t.atol for k, t in tol.items()},
            rtol={k: t.rtol for k, t in tol.items()},
            check_error_stat={k: t.stat for k, t in tol.items()},
            error_quantile={k: t.quantile for k, t in tol.items()},
        )


_TIGHT = Tolerance(atol=1e-3, rtol=1e-3, stat="quantile")
_TIGHT_CONF = Tolerance(atol=1e-2, rtol=1e-2, stat="quantile")

EXPORT_GATE = Gate(
    "export",
    {
        "pose_enc": Tolerance(atol=1e-3, rtol=1e-3, stat="max"),  # 9 numbers per frame: every one counts
        "depth": _TIGHT,
        "depth_conf": _TIGHT_CONF,
        "world_points": _TIGHT,
        "world_points_conf": _TIGHT_CONF,
    },
)


def _export_16bit(precision: str, dense: float) -> Gate:
    """Export gate of a 16-bit graph against the student in the same precision. The two round at different points
    (an ONNX op per rounding where PyTorch fuses, e.g. a linear's bias), so the dense outputs may differ by a few
    units in the last place: ``dense`` is 4 ulps at 1.0. ``pose_enc`` (its maximum, 9 numbers per frame) gets 5e-2
    in both: there an FP8 GEMM turns a 1-ulp difference of its 16-bit input into a whole FP8 step (measured 2.3e-2
    with bf16, 3.2e-2 with fp16, 7.8e-3 without FP8; docs/deploy.md)."""
    tolerance = Tolerance(atol=dense, rtol=dense, stat="quantile")
    return Gate(
        f"export-{precision}",
        {
            "pose_enc": Tolerance(atol=5e-2, rtol=5e-2, stat="max"),
            "depth": tolerance,
            "depth_conf": tolerance,
            "world_points": tolerance,
            "world_points_conf": tolerance,
        },
    )


# Keyed by the exporter's precision names; 4 ulps at 1.0 is 4 * 2**-7 for bf16, 4 * 2**-10 for fp16.
EXPORT_GATES = {"fp32": EXPORT_GATE, "bf16": _export_16bit("bf16", 3e-2), "fp16": _export_16bit("fp16", 4e-3)}


def export_gate(precision: str) -> Gate:
    """The export gate for artifacts of ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    if precision not in EXPORT_GATES:
        raise ValueError(f"precision must be one of {', '.join(EXPORT_GATES)}; got {precision!r}")
    return EXPORT_GATES[precision]

RECONSTRUCTION_GATE = Gate(
    "reconstruction",
    {
        "pose_enc": Tolerance(atol=2e-2, rtol=5e-2, stat="median"),
        "depth": Tolerance(atol=1e-3, rtol=5e-2, stat="median"),
        "depth_conf": Tolerance(atol=1e-1, rtol=5e-1, stat="median"),
        "world_points": Tolerance(atol=1e-2, rtol=1e-1, stat="median"),
        "world_points_conf": Tolerance(atol=1e-1, rtol=5e-1, stat="median"),
    },
    metric_limits={"depth_abs_rel": 0.05, "rotation_error_deg": 2.0, "translation_error_deg": 5.0},
)


TEACHER_GATE_MODES = ("auto", "on", "off")


def teacher_gate(mode: str, trained_teacher: bool) -> Gate:
    """The reconstruction gate, enforced or informational.

    ``auto`` enforces it only for a teacher with real weights: a random-weight teacher predicts no
    reconstruction a student could be held to, so the comparison is then reported but does not gate.
    """
    if mode not in TEACHER_GATE_MODES:
        raise ValueError(f"teacher gate must be one of {TEACHER_GATE_MODES}; got {mode!r}")
    enforced = {"auto": trained_teacher, "on": True, "off": False}[mode]
    return replace(RECONSTRUCTION_GATE, enforced=enforced)
