"""Checkpoint reading and strict loading.

Reading never executes pickled code: ``.pt``/``.pth``/``.bin`` go through ``torch.load(weights_only=True)``,
``.safetensors`` through safetensors. Every way a file can fail to fit the model ends in one
:class:`CheckpointError` with a one-line explanation, before ``load_state_dict(strict=True)`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPER_KEYS = ("model", "state_dict")  # training checkpoints: {"model": sd, "optimizer": ...}
# Name prefixes of a whole state dict: DataParallel/DistributedDataParallel add "module."; the official DA3 API
# class holds the network as `.model`, so files saved through it (the Hugging Face releases) have "model.".
_WRAPPER_PREFIXES = ("module.", "model.")
_SHOWN = 5  # how many offending keys an error message lists


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``, unwrapped by :func:`checkpoint_filter_fn`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return checkpoint_filter_fn(_read_safetensors(path), path)
    if suffix in TORCH_SUFFIXES:
        return checkpoint_filter_fn(_read_torch(path), path)
    raise CheckpointError(
        f"unsupported checkpoint format {path.suffix!r} ({path}); "
        f"use {', '.join(TORCH_SUFFIXES)} or {SAFETENSORS_SUFFIX}"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {e}") from None


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file surfaces as almost any exception type from the unpickler
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path} contains pickled objects that are not tensors ({refused.group(1)}); lite3r loads with "
                "weights_only=True and never runs pickled code. Save a plain state dict "
                "(torch.save(model.state_dict(), ...)) or .safetensors instead"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e)) or re.match(r"\s*(.+)", str(e))
        reason = detail.group(1) if detail else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid torch.save file ({reason})") from None


def checkpoint_filter_fn(obj: object, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Adapts the containers checkpoints come in to a flat ``{name: tensor}`` state dict.

    Unwraps ``{"model": sd}`` / ``{"state_dict": sd}`` and strips a ``module.`` (``DataParallel``) or ``model.``
    (DA3's API class) prefix shared by every name. This is the one place for such adaptations.
    """
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source} is not a state dict: {len(not_tensors)} entries are not tensors ({_first(not_tensors)})"
        )
    state_dict = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path = "checkpoint", assign: bool = False
) -> None:
    """Checks names and shapes against ``model``, then ``load_state_dict(strict=True)``.

    ``assign=True`` adopts the tensors instead of copying (cast to the model's dtypes): use it on a model built on
    the ``meta`` device to avoid initialising weights that are about to be replaced.
    Names the model ties to one tensor (a module used in several places) may appear once: a file saved with
    safetensors' ``save_model`` keeps one name per shared tensor. Where several appear, they must be equal.
    """
    expected = model.state_dict()
    tied = _tied_names(model)
    state_dict = dict(state_dict)
    for names in tied:
        given = next((n for n in names if n in state_dict), None)
        if given is not None:
            for name in names:
                state_dict.setdefault(name, state_dict[given])
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        raise CheckpointError(f"{source} does not match the model: {'; '.join(parts)}")
    mismatched = [k for k, v in expected.items() if v.shape != state_dict[k].shape]
    if mismatched:
        shown = ", ".join(
            f"{k}: model expects {tuple(expected[k].shape)}, checkpoint has {tuple(state_dict[k].shape)}"
            for k in mismatched[:_SHOWN]
        )
        more = f" and {len(mismatched) - _SHOWN} more" if len(mismatched) > _SHOWN else ""
        raise CheckpointError(f"{source}: shape mismatch in {len(mismatched)} tensors ({shown}{more})")
    for names in tied:
        differing = [n for n in names[1:] if not torch.equal(state_dict[n], state_dict[names[0]])]
        if differing:
            raise CheckpointError(
                f"{source}: {names[0]} and {differing[0]} differ, but the model shares one tensor between them"
            )
    if assign:
        state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict names that refer to one tensor of ``model``."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more
