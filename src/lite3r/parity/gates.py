"""Parity gates: per-output tolerances and metric limits, defined once.

Two questions, two gates (docs/deploy.md has the reasoning):

* ``EXPORT_GATES`` (tight, one per precision): does an exported artifact (ONNX, engine) compute what the PyTorch
  student in the same precision computes? Same math, so differences are rounding noise of that precision. The
  99.9th percentile of the error is checked rather than its maximum because an FP8 graph may round a handful of
  activations to the neighbouring FP8 value where the fake-quantised student does not; a real export bug moves
  far more than 0.1 % of the elements. Confidences are ``1 + exp(x)``: their relative error is the absolute
  error of ``x``. ``EXPORT_GATE`` is the float32 one. A 16-bit gate scales with the model's own rounding noise
  (flash-attention's tolerance rule): an output may differ from the 16-bit student by twice what that student
  differs from the float32 student, plus one unit in the last place at 1.0.
* ``RECONSTRUCTION_GATE`` (loose): is the student (SLA, FP8) still a good stand-in for the dense teacher?
  Median errors per output, plus reconstruction metrics of the student against the teacher's prediction:
  depth AbsRel and the relative camera-pose errors (``lite3r.metrics``).

Polygraphy semantics: an output fails when the chosen statistic of the absolute error exceeds ``atol`` *and*
that of the relative error (relative to the reference) exceeds ``rtol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

# VGGT's output names. The pipeline asks a model for its own: model.family.outputs (lite3r.models.ModelFamily).
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
    # > 0: each output's atol grows by noise_factor x that output's error (same statistic) of the student in the
    # gate's precision against the float32 student: the precision's own rounding noise (``widened``).
    noise_factor: float = 0.0

    def widened(self, noise: Mapping[str, float]) -> Gate:
        """This gate with ``atol + noise_factor * noise[output]`` per output (``noise``: the statistic each output
        is checked with, of the 16-bit student against the float32 one)."""
        tolerances = {  # outputs another model family has (not measured here) keep their tolerance
            k: replace(t, atol=t.atol + self.noise_factor * noise.get(k, 0.0)) for k, t in self.tolerances.items()
        }
        return replace(self, tolerances=tolerances, noise_factor=0.0)

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

_CAMERA = Tolerance(atol=1e-3, rtol=1e-3, stat="max")  # a few numbers per frame: every one counts

# Tolerances for the outputs of every model family (VGGT: pose_enc, world_points; DA3: extrinsics, intrinsics).
EXPORT_GATE = Gate(
    "export",
    {
        "pose_enc": _CAMERA,
        "extrinsics": _CAMERA,
        "intrinsics": _CAMERA,  # pixels: the relative error decides
        "depth": _TIGHT,
        "depth_conf": _TIGHT_CONF,
        "world_points": _TIGHT,
        "world_points_conf": _TIGHT_CONF,
    },
)


def _export_16bit(precision: str, ulp: float) -> Gate:
    """Export gate of a 16-bit graph against the student in the same precision, with the noise rule:
    ``|artifact - student| <= 2 x |student - float32 student| + ulp``, per output, with the float32 gate's
    statistics (maximum for pose_enc, 99.9th percentile for the dense maps). The two 16-bit computations round at
    different points (an ONNX op per rounding where PyTorch fuses, e.g. a linear's bias) and an FP8 GEMM turns a
    1-ulp difference of its 16-bit input into a whole FP8 step, so no fixed tolerance fits every model: measured
    on the test student, pose_enc differs by up to 0.10 (bf16 + FP8) where the bf16 student itself is 0.13 from
    the float32 one, and by 8e-3 without FP8 (docs/deploy.md). ``rtol=0``: the bound is absolute."""
    return Gate(
        f"export-{precision}",
        {name: replace(t, atol=ulp, rtol=0.0) for name, t in EXPORT_GATE.tolerances.items()},
        noise_factor=2.0,
    )


# Keyed by the exporter's precision names; one unit in the last place at 1.0: 2**-7 for bf16, 2**-10 for fp16.
EXPORT_GATES = {"fp32": EXPORT_GATE, "bf16": _export_16bit("bf16", 2**-7), "fp16": _export_16bit("fp16", 2**-10)}


def noise_gate(gate: Gate) -> Gate:
    """Measures (never fails) the rounding noise a 16-bit ``gate`` scales with: the 16-bit student against the
    float32 student, with the gate's statistics."""
    tolerances = {k: replace(t, atol=float("inf"), rtol=float("inf")) for k, t in gate.tolerances.items()}
    return Gate(f"{gate.name}-noise", tolerances, enforced=False)


def export_gate(precision: str) -> Gate:
    """The export gate for artifacts of ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``)."""
    if precision not in EXPORT_GATES:
        raise ValueError(f"precision must be one of {', '.join(EXPORT_GATES)}; got {precision!r}")
    return EXPORT_GATES[precision]

RECONSTRUCTION_GATE = Gate(
    "reconstruction",
    {
        "pose_enc": Tolerance(atol=2e-2, rtol=5e-2, stat="median"),
        "extrinsics": Tolerance(atol=2e-2, rtol=5e-2, stat="median"),
        "intrinsics": Tolerance(atol=1e-2, rtol=5e-2, stat="median"),
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
