"""``convert_to_sla``: a student copy of a model whose chosen attention layers run Sparse-Linear Attention;
``restore_dense_attention``: the way back, for frame profiles below the dense/SLA crossover."""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from lite3r.models import family_of
from lite3r.models.attention import Attention, DenseAttentionCore
from lite3r.sla.module import SparseLinearAttention
from lite3r.sla.op import check_options

LayerFilter = Callable[[str, nn.Module], bool]


def convert_to_sla(
    model: nn.Module,
    layers: str | LayerFilter = "global",
    *,
    kh: float = 0.05,
    kl: float = 0.10,
    block_q: int = 64,
    block_k: int = 64,
    feature_map: str = "softmax",
    backend: str = "auto",
    dense_tokens: int | None = None,
) -> nn.Module:
    """Return a deep copy of ``model`` whose selected ``Attention`` layers use a ``SparseLinearAttention`` core.

    ``layers``: ``"global"`` (the cross-view attention layers: VGGT's ``aggregator.global_blocks.{i}.attn``, DA3's
    odd backbone blocks from ``alt_start`` on), ``"all"`` (with the per-view layers of the alternating trunk; the
    model's family says which, ``model.family.sla_layers``), or a callable ``(qualified_name, module) -> bool``
    over the model's ``Attention`` modules. The teacher is left
    untouched and shares no storage with the student; in the student only the new ``proj_lin`` parameters
    require gradients. ``proj_lin`` takes the device and dtype of each layer's ``qkv`` weight. ``dense_tokens``
    (see ``SparseLinearAttention``): default the family's ``summary_tokens`` (VGGT: 5); 0 for plain SLA.
    """
    options = dict(kh=kh, kl=kl, block_q=block_q, block_k=block_k, feature_map=feature_map, backend=backend)
    check_options(**options)
    keep = layers if callable(layers) else family_of(model).sla_filter(layers)
    if dense_tokens is None:  # a model that is not a lite3r model (a callable picks its layers) has no summary tokens
        dense_tokens = getattr(getattr(model, "family", None), "summary_tokens", 0)
    student = copy.deepcopy(model)
    student.requires_grad_(False)
    chosen = [(name, m) for name, m in student.named_modules() if isinstance(m, Attention) and keep(name, m)]
    if not chosen:
        names = [name for name, m in student.named_modules() if isinstance(m, Attention)][:3]
        raise ValueError(f"layers={layers!r} matched no Attention layer (the model's start with {names})")
    for name, attn in chosen:
        if isinstance(attn.core, SparseLinearAttention):
            raise ValueError(f"{name} already uses SparseLinearAttention; convert the dense teacher instead")
        attn.core = SparseLinearAttention(
            attn.head_dim, **options, dense_tokens=dense_tokens, device=attn.qkv.weight.device,
            dtype=attn.qkv.weight.dtype,
        )
    return student


def restore_dense_attention(model: nn.Module) -> nn.Module:
    """Give every SLA layer of ``model`` exact attention again, **in place** (its ``proj_lin`` goes): the model
    ``TorchRuntime`` runs on sequences below its ``dense_below``, as an exporter writes it for a frame profile that
    lies wholly below the crossover (docs/runtime.md). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, Attention) and isinstance(module.core, SparseLinearAttention):
            module.core = DenseAttentionCore()
    return model
