"""Parity gates: per-output tolerances and metric limits, defined once.

Two questions, two gates (docs/deploy.md has the reasoning):

* ``EXPORT_GATE`` (tight): does an exported artifact (ONNX, engine) compute what the PyTorch student computes?
  Same math, so differences are float noise. The 99.9th percentile of the error is checked rather than its
  maximum because an FP8 graph may round a handful of activations to the neighbouring FP8 value where the
  fake-quantised student does not; a real export bug moves far more than 0.1 % of the elements.
  Confidences are ``1 + exp(x)``: their relative error is the absolute error of ``x``, hence 1e-2.
* ``RECONSTRUCTION_GATE`` (loose): is the student (SLA, FP8) still a good stand-in for the dense teacher?
  Median errors per output, plus reconstruction metrics of the student against the teacher's prediction:
  depth AbsRel and the relative camera-pose errors (``lite3r.metrics``).

Polygraphy semantics: an output fails when the chosen statistic of the absolute error exceeds ``atol`` *and*
that of the relative error (relative to the reference) exceeds ``rtol``.

The export gate's ``atol`` is raised, per scene and output, to twice the student's own *noise floor*: the same
statistic of its change when its input and the input of every FP8 activation quantizer are perturbed by float
noise (relative ``1e-6``, ``noise_runs`` seeded runs; ``runners.PerturbedTorchRunner``).
An FP8 graph rounds each activation to e4m3; an activation within float noise of a rounding boundary lands on
either neighbour, one e4m3 step (6 %) apart, and a chaotic output (``pose_enc`` of a random-weight model moves
by 5e-2) follows. No export can agree with the student more closely than the student agrees with itself, so
that is the bound (the flash-attention rule: at most twice the reference's own error). For a well-conditioned
model the floor is float noise and the gate keeps its ``atol``; ``parity.md`` shows the floor next to the error.
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
    noise_runs: int = 0  # perturbed runs of the reference that measure its noise floor (0: none)
    noise_factor: float = 2.0  # atol is at least this times the floor
    noise_scale: float = 1e-6  # relative size of the input perturbation

    def compare_func(self, atol: Mapping[str, float] | None = None) -> Any:
        """Polygraphy ``SimpleCompareFunc`` with this gate's per-output tolerances (``atol`` overrides)."""
        from polygraphy.comparator import SimpleCompareFunc

        tol = self.tolerances
        return SimpleCompareFunc(
            atol={k: t.atol for k, t in tol.items()} | dict(atol or {}),
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
    noise_runs=3,
)

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
