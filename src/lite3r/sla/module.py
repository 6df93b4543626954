"""``SparseLinearAttention``: an attention core (see ``lite3r.models.attention``) that owns ``proj_lin``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lite3r.sla.op import check_options, sparse_linear_attention
from lite3r.sla.reference import check_qk_codes


class SparseLinearAttention(nn.Module):
    """Core contract: ``forward(q, k, v)`` on ``[B, H, L, D]`` (after q/k-norm and RoPE) returns ``[B, H, L, D]``.

    ``proj_lin`` is one ``nn.Linear(D, D)`` shared by all heads (as in thu-ml/SLA), zero-initialised so that an
    untrained core is exactly block-sparse attention; it is the only parameter distillation trains.

    ``dense_tokens``: the first ``dense_tokens`` tokens of every frame (VGGT's camera and register tokens) attend
    exactly over all keys; their SLA rows are replaced. A frame's camera token must gather every other view to
    predict poses, and a few critical blocks cannot carry that (trained vggt-small, kh 5 %, 16 views: rotation error
    against the teacher 26.9 -> 11.8 deg for 2 % of the rows; ``benchmarks/RESULTS.md``). Plain tensor ops around
    the SLA op, so the ONNX graph, the engine and the ``.pt2`` carry them without a new kernel.

    ``dense_below``: sequences shorter than this many tokens take exact attention instead (0: never). Below a
    few thousand tokens dense flash attention is cheaper than SLA's block map, states and kernels (VGGT-1B on the
    H200: the student is 5 % slower than the dense model at 2 frames of 518², 1.35x faster at 8;
    docs/runtime.md). A deployment setting (``RuntimeOptions.dense_below``, on by default there), not saved with a
    student and off in training and in the exported graphs.

    ``qk_codes`` (``"int8"`` / ``"fp8"``): the critical attention scores 8-bit codes of q and smoothed k on 8-bit
    tensor cores (``lite3r.sla.reference.quantized_qk``); inference only. A deployment setting as ``dense_below``
    (``RuntimeOptions.qk_codes``).
    """

    def __init__(
        self,
        head_dim: int,
        *,
        kh: float = 0.05,
        kl: float = 0.10,
        block_q: int = 64,
        block_k: int = 64,
        feature_map: str = "softmax",
        backend: str = "auto",
        dense_tokens: int = 0,
        dense_below: int = 0,
        qk_codes: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_options(kh, kl, block_q, block_k, feature_map, backend)
        self.kh, self.kl = kh, kl
        self.block_q, self.block_k = block_q, block_k
        self.feature_map = feature_map
        self.backend = backend
        if not isinstance(dense_tokens, int) or dense_tokens < 0:
            raise ValueError(f"dense_tokens must be an integer >= 0, got {dense_tokens!r}")
        self.dense_tokens = dense_tokens
        self.dense_below = check_dense_below(dense_below)
        check_qk_codes(qk_codes)
        self.qk_codes = qk_codes
        self.proj_lin = nn.Linear(head_dim, head_dim, device=device, dtype=dtype)
        nn.init.zeros_(self.proj_lin.weight)
        nn.init.zeros_(self.proj_lin.bias)

    @property
    def options(self) -> dict[str, float | int | str]:
        """The SLA options that define the numbers (``kh``, ``kl``, ``block_q``, ``block_k``, ``feature_map``);
        ``backend`` only picks the implementation."""
        return dict(kh=self.kh, kl=self.kl, block_q=self.block_q, block_k=self.block_k, feature_map=self.feature_map)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        if self.dense_below and q.shape[2] < self.dense_below:  # off (0): no comparison, exported graphs never branch
            return F.scaled_dot_product_attention(q, k, v)
        out = sparse_linear_attention(
            q, k, v, self.proj_lin.weight, self.proj_lin.bias, **self.options, backend=self.backend,
            qk_codes=self.qk_codes,
        )
        if not self.dense_tokens:
            return out
        return dense_frame_rows(out, q, k, v, self.dense_tokens, 1 if frames is None else frames)

    def extra_repr(self) -> str:
        extra = (("backend", self.backend), ("dense_tokens", self.dense_tokens), ("dense_below", self.dense_below),
                 ("qk_codes", self.qk_codes))
        return ", ".join(f"{k}={v!r}" for k, v in (*self.options.items(), *extra))


def runtime_settings_error(model: nn.Module) -> str | None:
    """Why an exporter must refuse ``model`` (an SLA layer with a runtime setting: ``dense_below`` or
    ``qk_codes``), or None: the exported graphs run SLA at every length with 16-bit scores (docs/runtime.md)."""
    layers = [m for m in model.modules() if isinstance(m, SparseLinearAttention)]
    if tokens := max((m.dense_below for m in layers), default=0):
        return (f"the SLA layers have dense_below={tokens} (a TorchRuntime setting); exports run SLA at every "
                "length: set it to 0 first")
    if codes := next((m.qk_codes for m in layers if m.qk_codes), None):
        return (f"the SLA layers have qk_codes={codes!r} (a TorchRuntime setting); exports score in 16 bits: "
                "set it to None first")
    return None


def set_runtime_settings(model: nn.Module, *, dense_below: int, qk_codes: str | None) -> nn.Module:
    """Every SLA layer of ``model`` takes exact attention below ``dense_below`` tokens (0: never) and scores with
    ``qk_codes`` (None: 16 bits), in place; returns ``model``."""
    check_dense_below(dense_below)
    check_qk_codes(qk_codes)
    for module in model.modules():
        if isinstance(module, SparseLinearAttention):
            module.dense_below, module.qk_codes = dense_below, qk_codes
    return model


def check_dense_below(tokens: int) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"dense_below must be a token count >= 0 (0: never dense), got {tokens!r}")
    return tokens


# Flash attention first for the few dense rows over every key: it splits the keys across thread blocks, where
# cuDNN's kernel (the runtime's first choice elsewhere) runs one block per 64 queries and idles most of the GPU
# (VGGT-1B global layers on the H200: 0.16 vs 0.45 ms per layer at 32 frames, 1.04 vs 1.36 at 100;
# benchmarks/RESULTS.md). The CPU takes its flash kernel first anyway; exports record a plain SDPA.
_FEW_QUERIES_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                         SDPBackend.MATH]


def dense_frame_rows(
    out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, count: int, frames: int
) -> torch.Tensor:
    """``out`` with the rows of the first ``count`` tokens of each of ``frames`` equal-length frames replaced by
    exact softmax attention of those queries over all keys."""
    rows = q.unflatten(2, (frames, -1))[:, :, :, :count].flatten(2, 3)
    with sdpa_kernel(_FEW_QUERIES_BACKENDS, set_priority=True):
        exact = F.scaled_dot_product_attention(rows, k, v).unflatten(2, (frames, count))
    return torch.cat((exact, out.unflatten(2, (frames, -1))[:, :, :, count:]), dim=3).flatten(2, 3)
