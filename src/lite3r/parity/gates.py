"""Parity gates: per-output tolerances and metric limits, defined once.

Two questions, two gates (docs/deploy.md has the reasoning):

* ``EXPORT_GATE`` (tight): does an exported artifact (ONNX, engine) compute what the PyTorch student computes?
  Same math, so differences are float noise. The 99.9th percentile of the error is checked rather than its
  maximum because an FP8 graph may round a handful of activations to the neighbouring FP8 value where the
  fake-quantised student does not; a real export bug moves far more than 0.1 % of the elements.
  Confidences are ``1 + exp(x)``: their relative error is the absolute error of ``x``, hence 1e-2.
  A 16-bit artifact (the ``.pt2`` package) is held to ``export_gate(dtype)``: the same statistics with
  tolerances scaled to the precision (measured on vggt-tiny: bf16 errors are about 8x fp16's, the ratio of
  their machine epsilons; docs/deploy.md has the numbers).
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

# Artifacts that compute in 16 bits, against the float32 PyTorch student. Measured on vggt-tiny (CPU, 2 scenes):
# bf16 worst pose_enc 1.5e-2, depth 4.2e-3, confidences 7.0e-3, world_points 1.6e-3 absolute; fp16 about 8x less
# (the ratio of their machine epsilons); the gates keep 2.5-7x headroom.
def _16bit_gate(dtype: str, scale: float) -> Gate:
    """The bf16 tolerances times ``scale`` (atol = rtol)."""
    at = {"pose_enc": 5e-2, "depth": 1e-2, "depth_conf": 5e-2, "world_points": 1e-2, "world_points_conf": 5e-2}
    stat = {name: tolerance.stat for name, tolerance in EXPORT_GATE.tolerances.items()}
    return Gate(f"export-{dtype}", {name: Tolerance(t * scale, t * scale, stat[name]) for name, t in at.items()})


_16BIT_GATES = {"bfloat16": _16bit_gate("bfloat16", 1.0), "float16": _16bit_gate("float16", 0.2)}


def export_gate(dtype: str = "float32") -> Gate:
    """The export gate for an artifact computing in ``dtype`` (``float32``, ``bfloat16``, ``float16``)."""
    if dtype == "float32":
        return EXPORT_GATE
    if dtype not in _16BIT_GATES:
        raise ValueError(f"no export gate for dtype {dtype!r}; choose from float32, {', '.join(_16BIT_GATES)}")
    return _16BIT_GATES[dtype]


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
