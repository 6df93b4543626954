"""FP8 calibration with ModelOpt, and the scales as plain JSON (``quant_state.json``).

ModelOpt is imported only inside the functions that need it, so importing this package stays light.
"""

from __future__ import annotations

from lite3r.calibration.fp8 import CalibrationError, calibrate_fp8, quantize_fp8
from lite3r.calibration.state import (
    QuantStateError,
    apply_quant_state,
    load_quant_state,
    quant_state,
    read_quant_state,
    save_quant_state,
    validate_quant_state,
)

__all__ = [
    "CalibrationError",
    "QuantStateError",
    "apply_quant_state",
    "calibrate_fp8",
    "load_quant_state",
    "quant_state",
    "quantize_fp8",
    "read_quant_state",
    "save_quant_state",
    "validate_quant_state",
]
