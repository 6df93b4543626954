"""What scripts/compare_official_*.py share: seeded weight perturbation, the error table and the golden fixture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


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
