"""``quant_state.json``: every FP8 quantizer's scale as plain JSON, the hand-off to the runtime and exporter.

ModelOpt keeps its state in pickled Python objects; this file holds only what a deployment needs and can
be read by anything. Format (``version`` 1)::

    {
      "format": "lite3r.quant_state",
      "version": 1,
      "modelopt_version": "0.47.0",
      "quantizers": [
        {"module": "aggregator.frame_blocks.0.attn.qkv", "tensor": "input",
         "format": "e4m3", "num_bits": [4, 3], "axis": null, "amax": 3.4662},
        {"module": "aggregator.frame_blocks.0.attn.qkv", "tensor": "weight",
         "format": "e4m3", "num_bits": [4, 3], "axis": null, "amax": 0.125},
        ...
      ]
    }

- ``module``: the ``nn.Linear`` layer's name in ``model.named_modules()``; ``tensor``: ``input``
  (activation, quantized on entry to the layer) or ``weight``.
- ``amax``: the calibrated absolute maximum. The FP8 scale is ``amax / 448`` (``448`` = e4m3fn max):
  ``q = cast_e4m3(clamp(x * 448 / amax, ±448))``, ``x ≈ q * amax / 448``. A number for per-tensor
  scales (``axis`` null); for per-channel weight scales (``axis`` 0) a list with one value per output
  channel (row of the weight).
- Entries are in module order; only enabled quantizers are listed, so the list is also the set of layers
  that run in FP8. Floats are float32 values written exactly, so a round trip reproduces every bit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r._io import atomic_write_bytes
from lite3r.quant import E4M3_BITS

FORMAT = "lite3r.quant_state"
VERSION = 1
TENSORS = ("input", "weight")


class QuantStateError(ValueError):
    """A quant state that cannot be written, read or applied to the given model."""


def quant_state(model: nn.Module) -> dict[str, Any]:
    """The quant state (see module docstring) of a model quantized with ModelOpt."""
    from modelopt import __version__ as modelopt_version

    entries = []
    for name, quantizer in _tensor_quantizers(model):
        if not quantizer.is_enabled:
            continue
        module, _, leaf = name.rpartition(".")
        tensor = leaf.removesuffix("_quantizer")
        if tensor not in TENSORS or not isinstance(model.get_submodule(module), nn.Linear):
            raise QuantStateError(f"{name}: only input/weight quantizers of nn.Linear layers can be saved")
        if tuple(quantizer.num_bits) != E4M3_BITS:
            raise QuantStateError(f"{name}: format {quantizer.num_bits} is not FP8 e4m3 (num_bits (4, 3))")
        if quantizer.amax is None:
            raise QuantStateError(f"{name} has no amax: calibrate the model before saving its quant state")
        axis = _axis(name, tensor, quantizer.axis)
        amax = quantizer.amax.detach().float().cpu()
        entries.append(
            {
                "module": module,
                "tensor": tensor,
                "format": "e4m3",
                "num_bits": list(E4M3_BITS),
                "axis": axis,
                "amax": amax.reshape(-1).tolist() if axis == 0 else amax.item(),
            }
        )
    if not entries:
        raise QuantStateError("the model has no enabled FP8 quantizer (quantize it with calibrate_fp8 first)")
    return {"format": FORMAT, "version": VERSION, "modelopt_version": modelopt_version, "quantizers": entries}


def save_quant_state(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``quant_state.json`` atomically; returns the path."""
    path = Path(path)
    text = json.dumps(quant_state(model), indent=1)
    atomic_write_bytes(path, (text + "\n").encode())
    return path


def read_quant_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``quant_state.json``."""
    try:
        state = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise QuantStateError(f"quant state not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuantStateError(f"{path} is not valid JSON: {e}") from None
    return validate_quant_state(state, source=str(path))


def validate_quant_state(state: Any, source: str = "quant state") -> dict[str, Any]:
    """Check the format of a quant state dict; returns it unchanged."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise QuantStateError(f"{source} is not a lite3r quant state (expected \"format\": \"{FORMAT}\")")
    if state.get("version") != VERSION:
        raise QuantStateError(f"{source} has version {state.get('version')!r}; this lite3r reads version {VERSION}")
    entries = state.get("quantizers")
    if not isinstance(entries, list) or not entries:
        raise QuantStateError(f"{source} lists no quantizers")
    for i, entry in enumerate(entries):
        _check_entry(entry, f"{source}: quantizers[{i}]")
    return state


def apply_quant_state(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Make ``model``'s FP8 quantizers exactly those of ``state`` (same layers, formats and amax).

    Works on a plain model (quantizers are inserted, no calibration runs) and on one already quantized
    (quantizers not in ``state`` are disabled). Returns the model, changed in place.
    """
    from lite3r.calibration._modelopt import modelopt_quantization

    mtq = modelopt_quantization()
    from modelopt.torch.quantization.utils import is_quantized

    validate_quant_state(state)
    for entry in state["quantizers"]:
        if not isinstance(_get(model, entry["module"]), nn.Linear):
            raise QuantStateError(f"{entry['module']} is not an nn.Linear layer of this model")
    from lite3r.calibration.fp8 import modelopt_prints_to_stderr

    if not is_quantized(model):
        with modelopt_prints_to_stderr():
            mtq.quantize(model, {"quant_cfg": [{"quantizer_name": "*", "enable": False}], "algorithm": None})
    wanted = {f"{e['module']}.{e['tensor']}_quantizer": e for e in state["quantizers"]}
    for name, quantizer in _tensor_quantizers(model):
        entry = wanted.pop(name, None)
        if entry is None:
            quantizer.disable()
            continue
        device = _get(model, entry["module"]).weight.device
        amax = torch.tensor(entry["amax"], dtype=torch.float32, device=device)
        quantizer.set_from_attribute_config({"num_bits": E4M3_BITS, "axis": entry["axis"], "enable": True})
        quantizer.amax = amax.reshape(-1, 1) if entry["axis"] == 0 else amax
    if wanted:
        raise QuantStateError(f"the model has no quantizer {next(iter(wanted))} (is it the same architecture?)")
    return model


def load_quant_state(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """:func:`apply_quant_state` with the state read from ``quant_state.json``."""
    return apply_quant_state(model, read_quant_state(path))


def _tensor_quantizers(model: nn.Module):
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorQuantizer)]


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise QuantStateError(f"the model has no module {name!r} (is it the same architecture?)") from None


def _axis(name: str, tensor: str, axis: Any) -> int | None:
    if axis is None or (tensor == "weight" and axis in (0, (0,))):
        return None if axis is None else 0
    raise QuantStateError(f"{name}: axis {axis!r} is not supported (per-tensor, or per output channel for weights)")


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise QuantStateError(f"{where} is not an object")
    missing = {"module", "tensor", "format", "num_bits", "axis", "amax"} - entry.keys()
    if missing:
        raise QuantStateError(f"{where} lacks {sorted(missing)}")
    if entry["tensor"] not in TENSORS:
        raise QuantStateError(f"{where}: tensor must be one of {TENSORS}, got {entry['tensor']!r}")
    if entry["format"] != "e4m3" or entry["num_bits"] != list(E4M3_BITS):
        raise QuantStateError(f"{where}: only format e4m3 (num_bits [4, 3]) is supported")
    _axis(f"{where} ({entry['module']})", entry["tensor"], entry["axis"])
    values = entry["amax"] if entry["axis"] == 0 else [entry["amax"]]
    if not isinstance(values, list) or not values or not all(_is_scale(v) for v in values):
        kind = "a list of non-negative numbers" if entry["axis"] == 0 else "a non-negative number"
        raise QuantStateError(f"{where}: amax must be {kind}, got {entry['amax']!r}")


def _is_scale(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
