"""Trained weights shipped as package data: where they live, how they are written and how they are installed.

A preset that declares ``weights`` (``vggt-small``) finds ``lite3r/models/weights/<name>.safetensors`` and its
sidecar ``<name>.json`` (the weight card: training recipe, seed, steps, held-out metrics, date, device and
the file's SHA-256). The weights are produced by ``lite3r train-teacher`` on a GPU and put in place with
``scripts/install_teacher.py`` (:func:`install_weights`), which checks the card and loads the file strictly
before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite3r._io import atomic_write_bytes
from lite3r.models._checkpoint import CheckpointError, load_state_dict_strict
from lite3r.models._registry import get_preset, shipped_weights_name

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_WEIGHTS_BYTES = 20_000_000  # what package data may weigh (bf16 keeps vggt-small at 19.7 MB)


class MissingWeightsError(CheckpointError):
    """A preset's shipped weights are not installed."""


def pretrained_weights(name: str) -> Path | None:
    """Where preset ``name``'s shipped weights are (installed or not); None for a preset without any."""
    file = shipped_weights_name(name)
    return None if file is None else WEIGHTS_DIR / file


def card_path(weights: str | os.PathLike) -> Path:
    """The weight card (sidecar JSON) of a weights file."""
    return Path(weights).with_suffix(".json")


def require_pretrained(name: str) -> Path:
    """The installed weights file of preset ``name``; a one-line :class:`MissingWeightsError` if absent."""
    path = pretrained_weights(name)
    if path is None:
        raise MissingWeightsError(f"{name} ships no trained weights (pass a checkpoint, or pretrained=False)")
    if not path.is_file():
        raise MissingWeightsError(
            f"{name}: trained weights not installed ({path} is missing); install them with "
            f"`python3 scripts/install_teacher.py FOLDER` (from `lite3r train-teacher --out FOLDER`), "
            f"or use random weights (pretrained=False)"
        )
    return path


def weight_card(name: str) -> dict[str, Any]:
    """The installed weight card of preset ``name`` (recipe, seed, steps, metrics, date, device)."""
    card = card_path(require_pretrained(name))
    if not card.is_file():
        raise MissingWeightsError(f"{name}: weight card {card} is missing; reinstall with scripts/install_teacher.py")
    return json.loads(card.read_text())


def save_weights(model: nn.Module, path: str | os.PathLike, card: dict[str, Any]) -> list[Path]:
    """Write ``model``'s state dict in bf16 as safetensors plus its card (with the file's SHA-256), atomically."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"model": str(card.get("model", ""))})
    card = {**card, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    atomic_write_bytes(path, data)
    atomic_write_bytes(card_path(path), (json.dumps(card, indent=2) + "\n").encode())
    return [path, card_path(path)]


def read_weights(folder: str | os.PathLike, name: str) -> tuple[bytes, dict[str, Any]]:
    """Preset ``name``'s weights file in ``folder`` and its card. The file may come split in pieces
    ``<file>.part0``, ``<file>.part1``, ... (how a GPU run returns files above its size limit): they are joined
    in order, and the card's SHA-256 tells whether the result is the file that was written."""
    file = shipped_weights_name(name)
    if file is None:
        raise CheckpointError(f"{name} is not a preset with shipped weights")
    folder = Path(folder)
    card_file = card_path(folder / file)
    numbered = {int(m[1]): p for p in folder.glob(f"{file}.part*") if (m := re.fullmatch(r".*\.part(\d+)", p.name))}
    parts = [folder / file] if (folder / file).is_file() else [numbered[i] for i in sorted(numbered)]
    if not parts or not card_file.is_file():
        raise CheckpointError(f"need {file} (or its .part pieces) and {card_file.name} in {folder}")
    return b"".join(p.read_bytes() for p in parts), json.loads(card_file.read_text())


def check_weights(name: str, data: bytes, card: dict[str, Any], source: str | os.PathLike) -> None:
    """The card must name preset ``name`` and carry the SHA-256 of ``data``, which must fit in package data
    (:data:`MAX_WEIGHTS_BYTES`) and load strictly into the preset's architecture."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if card.get("model") != name:
        raise CheckpointError(f"the card in {source} describes model {card.get('model')!r}, not {name!r}")
    if card.get("sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"the weights in {source} do not match the SHA-256 of their card (a different or "
                              "damaged file)")  # fmt: skip
    if len(data) > MAX_WEIGHTS_BYTES:
        raise CheckpointError(f"the weights in {source} have {len(data)} bytes, more than package data may hold "
                              f"({MAX_WEIGHTS_BYTES})")  # fmt: skip
    try:
        state_dict = load(data)
    except SafetensorError as e:
        raise CheckpointError(f"the weights in {source} are not a safetensors file: {e}") from None
    build, config = get_preset(name)
    with torch.device("meta"):
        model = build(config)
    load_state_dict_strict(model, state_dict, source=source, assign=True)


def install_weights(source: str | os.PathLike, name: str = "vggt-small") -> tuple[list[Path], dict[str, Any]]:
    """Check the weights + card of preset ``name`` in folder ``source`` (see :func:`read_weights`) and write
    both into the package's weights folder (:data:`WEIGHTS_DIR`): staged next to their destination and renamed
    only after both were written."""
    data, card = read_weights(source, name)
    check_weights(name, data, card, source)
    file = shipped_weights_name(name)
    destinations = [WEIGHTS_DIR / file, card_path(WEIGHTS_DIR / file)]
    contents = [data, (json.dumps(card, indent=2) + "\n").encode()]
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".install-", dir=WEIGHTS_DIR))
    try:
        for dst, content in zip(destinations, contents):
            (stage / dst.name).write_bytes(content)
        for dst in destinations:
            os.replace(stage / dst.name, dst)
            dst.chmod(0o644)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return destinations, card
