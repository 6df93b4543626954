"""Frame-count ranges (``MIN:OPT:MAX``), shared by the TensorRT optimisation profile and the PyTorch runtime's
CUDA graphs."""

from __future__ import annotations

from typing import NamedTuple, Sequence


class FrameRange(NamedTuple):
    """Frame counts a runtime accepts (``min..max``: an engine's optimisation profile, the PyTorch runtime's CUDA
    graphs) and is tuned for (``opt``)."""

    min: int
    opt: int
    max: int


def parse_frames(text: str) -> FrameRange:
    """``"2:8:32"`` -> ``FrameRange(2, 8, 32)``; a single count ``"8"`` gives a fixed frame count."""
    parts = str(text).strip().split(":")
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"frames {text!r} must be integers, as MIN:OPT:MAX (e.g. 2:8:32) or one count") from None
    if len(counts) == 1:
        counts *= 3
    return check_frames(counts)


def check_frames(counts: Sequence[int]) -> FrameRange:
    if len(counts) != 3:
        raise ValueError(f"frames needs MIN:OPT:MAX (e.g. 2:8:32) or one count; got {len(counts)} numbers")
    if any(not isinstance(c, int) or c < 1 for c in counts):
        raise ValueError(f"frame counts must be positive integers; got {tuple(counts)}")
    low, opt, high = counts
    if not low <= opt <= high:
        raise ValueError(f"frames must satisfy MIN <= OPT <= MAX; got {low}:{opt}:{high}")
    return FrameRange(low, opt, high)
