"""``SparseLinearAttention``: an attention core (see ``lite3r.models.attention``) that owns ``proj_lin``."""

from __future__ import annotations

import torch
from torch import nn

from lite3r.sla.op import check_options, sparse_linear_attention


class SparseLinearAttention(nn.Module):
    """Core contract: ``forward(q, k, v)`` on ``[B, H, L, D]`` (after q/k-norm and RoPE) returns ``[B, H, L, D]``.

    ``proj_lin`` is one ``nn.Linear(D, D)`` shared by all heads (as in thu-ml/SLA), zero-initialised so that an
    untrained core is exactly block-sparse attention; it is the only parameter distillation trains.
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_options(kh, kl, block_q, block_k, feature_map, backend)
        self.kh, self.kl = kh, kl
        self.block_q, self.block_k = block_q, block_k
        self.feature_map = feature_map
        self.backend = backend
        self.proj_lin = nn.Linear(head_dim, head_dim, device=device, dtype=dtype)
        nn.init.zeros_(self.proj_lin.weight)
        nn.init.zeros_(self.proj_lin.bias)

    @property
    def options(self) -> dict[str, float | int | str]:
        """The SLA options that define the numbers (``kh``, ``kl``, ``block_q``, ``block_k``, ``feature_map``);
        ``backend`` only picks the implementation."""
        return dict(kh=self.kh, kl=self.kl, block_q=self.block_q, block_k=self.block_k, feature_map=self.feature_map)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sparse_linear_attention(
            q, k, v, self.proj_lin.weight, self.proj_lin.bias, **self.options, backend=self.backend
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in (*self.options.items(), ("backend", self.backend)))
