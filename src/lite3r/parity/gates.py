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

**The noise rule** (every export gate; flash-attention's tolerance rule): per scene and output, the gate's
``atol`` grows by ``noise_factor`` (2) times the student's own *noise*: the same statistic of how far the
student's output moves under the rounding noise of the precision the artifact computes in. No export can agree
with the student more closely than the student agrees with itself. The noise is measured where it arises:

* float32 (``noise="perturbed"``): ``noise_runs`` seeded runs of the student whose input and the input of every
  FP8 activation quantizer are multiplied by ``1 + noise_scale * N(0, 1)`` (``runners.PerturbedTorchRunner``).
  An FP8 graph rounds each activation to e4m3; one within float noise of a rounding boundary lands on either
  neighbour, one e4m3 step (6 %) apart, and a chaotic output (``pose_enc`` of a random-weight model, 5e-2)
  follows. For a well-conditioned model the noise is float noise and the gate keeps its ``atol``.
* bf16 / fp16 (``noise="float32"``): the float32 student. Two 16-bit computations round at different points
  (an ONNX op per rounding where PyTorch fuses) and an FP8 GEMM turns a 1-ulp difference of its 16-bit input
  into a whole FP8 step; the 16-bit student's distance from the float32 one is that rounding noise.
  ``atol`` is then one unit in the last place at 1.0 and ``rtol`` 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

# VGGT's output names. The pipeline asks a model for its own: model.family.outputs (lite3r.models.ModelFamily).
OUTPUT_NAMES = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
Statistic = Literal["max", "mean", "median", "quantile"]
Noise = Literal["perturbed", "float32"]


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
    # The noise rule (module docstring): how the student's own noise is measured (None: no noise rule), and
    # atol + noise_factor x noise per scene and output.
    noise: Noise | None = None
    noise_factor: float = 2.0
    noise_runs: int = 3  # noise="perturbed": seeded perturbed runs (seeds 0 .. noise_runs - 1)
    noise_scale: float = 1e-6  # noise="perturbed": relative size of the perturbation

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

    @property
    def noise_seeds(self) -> list[int]:
        """Seeds of the perturbed runs the noise rule makes (none unless ``noise="perturbed"``)."""
        return list(range(self.noise_runs)) if self.noise == "perturbed" else []


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
    noise="perturbed",
)


def _export_16bit(precision: str, ulp: float) -> Gate:
    """Export gate of a 16-bit graph against the student in the same precision: ``|artifact - student| <= 2 x
    |student - float32 student| + ulp``, per output, with the float32 gate's statistics (maximum for pose_enc,
    99.9th percentile for the dense maps). No fixed tolerance fits every model: measured on the test student,
    pose_enc differs by up to 0.10 (bf16 + FP8) where the bf16 student itself is 0.13 from the float32 one, and
    by 8e-3 without FP8 (docs/deploy.md). ``rtol=0``: the bound is absolute."""
    return Gate(
        f"export-{precision}",
        {name: replace(t, atol=ulp, rtol=0.0) for name, t in EXPORT_GATE.tolerances.items()},
        noise="float32",
    )


# Keyed by the exporter's precision names; one unit in the last place at 1.0: 2**-7 for bf16, 2**-10 for fp16.
EXPORT_GATES = {"fp32": EXPORT_GATE, "bf16": _export_16bit("bf16", 2**-7), "fp16": _export_16bit("fp16", 2**-10)}


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
