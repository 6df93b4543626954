"""An amax sweep for the FP8 convention, shared by the in-process test and the oldest-onnxruntime subprocess.

For every amax the inputs sit on and one or two float32 ulps around each e4m3 rounding boundary (the midpoints
between neighbouring e4m3 values, and 448 where saturation starts), mapped back through ``448 / amax``, plus
Gaussian values up to three times amax. Run as a script (``python fp8_sweep.py OUT.npz``) it writes what the
onnxruntime on ``sys.path`` computes, so a test can compare another onnxruntime's codes with these.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from lite3r.exporter.qdq import add_fp8_constants, quantize_activation
from lite3r.parity.runners import SessionFromOnnxPath
from lite3r.quant import TINY_AMAX, fp8_multiplier


def amax_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, 1e-30, TINY_AMAX, np.nextafter(np.float32(TINY_AMAX), np.float32(1)), 1e-6, 0.1, 1.0, 3.0,
               448.0, 1000.0, 3.4662, 0.125, 6.0e4]  # fmt: skip
    return np.concatenate([special, 10 ** rng.uniform(-6, 5, 300)]).astype(np.float32)


def _e4m3_boundaries() -> np.ndarray:
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = np.unique(np.abs(codes[torch.isfinite(codes)].numpy()))
    return np.concatenate([(values[1:] + values[:-1]) / 2, values]).astype(np.float32)


def inputs_for(amax: np.float32, seed: int) -> np.ndarray:
    """float32 inputs whose product with the multiplier lands on, or next to, every e4m3 boundary."""
    multiplier = fp8_multiplier(float(amax)).item()
    targets = _e4m3_boundaries() / np.float32(multiplier)
    near = [targets]
    for direction in (np.inf, -np.inf):
        step = targets
        for _ in range(2):
            step = np.nextafter(step, np.float32(direction))
            near.append(step)
    positive = np.concatenate(near)
    effective = 1.0 if amax <= TINY_AMAX else float(amax)
    gaussian = np.random.default_rng(seed).standard_normal(512) * effective
    return np.concatenate([positive, -positive, gaussian, [0.0, 3 * effective, -3 * effective]]).astype(np.float32)


def sweep() -> tuple[np.ndarray, np.ndarray]:
    """amax values ``[K]`` and their inputs ``[K, N]``."""
    amaxes = amax_values()
    return amaxes, np.stack([inputs_for(a, i) for i, a in enumerate(amaxes)])


def onnx_quantize(amaxes: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exporter's activation quantizer, one per amax, run in onnxruntime the way lite3r runs it: e4m3 codes
    (cast back to float32, exact) and the dequantized values."""
    graph = helper.make_graph([], "sweep", [], [])
    add_fp8_constants(graph)
    nodes: list = []
    for k, amax in enumerate(amaxes):
        entry = {"module": f"q{k}", "tensor": "input", "format": "e4m3", "num_bits": [4, 3], "axis": None,
                 "amax": float(amax)}  # fmt: skip
        dequantized = quantize_activation(graph, nodes, f"q{k}", f"x{k}", entry)
        nodes.append(helper.make_node("Cast", [f"q{k}.input_quantizer.fp8"], [f"code{k}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Identity", [dequantized], [f"dq{k}"]))
        n = inputs.shape[1]
        graph.input.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [n]))
        graph.output.extend(
            helper.make_tensor_value_info(f"{kind}{k}", TensorProto.FLOAT, [n]) for kind in ("code", "dq")
        )
    graph.node.extend(nodes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    session = SessionFromOnnxPath(model.SerializeToString())()
    results = session.run(None, {f"x{k}": inputs[k] for k in range(len(amaxes))})
    return np.stack(results[0::2]), np.stack(results[1::2])


if __name__ == "__main__":
    amaxes, inputs = sweep()
    codes, dequantized = onnx_quantize(amaxes, inputs)
    np.savez(sys.argv[1], codes=codes, dequantized=dequantized)
