"""What scripts/compare_official_*.py share: seeded weight perturbation, the error table and the golden fixture."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from lite3r.models import load_state_dict_strict


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Seeded, in place: LayerScale gammas ~ U(0.1, 0.5), every other tensor += N(0, 0.02), so that no branch
    hides behind a near-zero initial scale."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(".gamma"):
                tensor.uniform_(0.1, 0.5, generator=generator)
            else:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)


def adopt_official_weights(
    official: torch.nn.Module, build: Callable, config, seed: int, label: str
) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Perturbs ``official``'s weights (:func:`perturb_`) and loads its state dict strictly into ``build(config)``,
    built on the meta device: with assign=True ours adopts the official tensors, so both share one copy."""
    t0 = time.perf_counter()
    perturb_(official.eval(), seed)
    state_dict = official.state_dict()
    with torch.device("meta"):
        ours = build(config)
    load_state_dict_strict(ours, state_dict, source=f"official {label} state dict", assign=True)
    n_params = sum(t.numel() for t in {t.data_ptr(): t for t in state_dict.values()}.values())
    print(f"{label}: {len(state_dict)} tensors, {n_params / 1e6:.2f} M parameters, loaded strictly "
          f"({time.perf_counter() - t0:.1f} s)")
    return state_dict, ours.eval()


def run_both(official: Callable, ours: Callable, images: torch.Tensor) -> tuple[Mapping, Mapping]:
    """``official()`` and ``ours()`` without gradients, timed; returns their outputs."""
    with torch.no_grad():
        t0 = time.perf_counter()
        reference = official()
        t_official = time.perf_counter() - t0
        t0 = time.perf_counter()
        mine = ours()
        t_ours = time.perf_counter() - t0
    print(f"input {tuple(images.shape)} float32 CPU, forward: official {t_official:.1f} s, lite3r {t_ours:.1f} s")
    return reference, mine


def report(reference: Mapping[str, torch.Tensor], mine: Mapping[str, torch.Tensor], keys: Sequence[str]) -> float:
    """Prints max |official|, max abs error and their ratio per output; returns the worst ratio."""
    if set(mine) != set(keys):
        raise SystemExit(f"lite3r returned keys {sorted(mine)}, expected {list(keys)}")
    print(f"{'output':<18} {'shape':<24} {'max |official|':>15} {'max abs err':>12} {'rel err':>10}")
    worst = 0.0
    for key in keys:
        ref, out = reference[key], mine[key]
        if ref.shape != out.shape:
            raise SystemExit(f"{key}: official shape {tuple(ref.shape)}, lite3r {tuple(out.shape)}")
        scale = ref.abs().max().item()
        err = (ref - out).abs().max().item()
        rel = err / max(scale, 1e-12)
        worst = max(worst, rel)
        print(f"{key:<18} {str(tuple(ref.shape)):<24} {scale:>15.4g} {err:>12.3g} {rel:>10.3g}")
    return worst


def save_fixture(path: str, state_dict, images, reference, metadata: dict[str, str]) -> None:
    """Official-layout weights (``model.*``), the input (``input.images``) and official outputs (``output.*``)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.clone() for k, v in state_dict.items()}  # clones: safetensors refuses shared ones
    tensors["input.images"] = images.contiguous()
    tensors.update({f"output.{k}": v.contiguous() for k, v in reference.items()})
    save_file(tensors, path, metadata=metadata)
    print(f"wrote {path}")
