"""Training scenes for the teacher: a pool of synthetic scenes rendered on the training device, refreshed as
training runs, from which each step draws scenes and random subsets of their views.

Scene families (a family is a ``SyntheticScenes`` seed; two families share no scene): training uses the
run's ``seed``; :data:`HELD_OUT_SEED` holds the held-out scenes (training curves, the experiment) and
:data:`DISTILL_SEED` the scenes the experiment distils on. Neither is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lite3r.data.synthetic import Scene, SyntheticScenes

HELD_OUT_SEED = 1_000_001
DISTILL_SEED = 1_000_002
RESERVED_SEEDS = (HELD_OUT_SEED, DISTILL_SEED)
_ENDLESS = 2**31 - 1  # scene indices of the training family: effectively unlimited


@dataclass(frozen=True)
class Batch:
    """``B`` scenes of ``S`` views: images ``[B, S, 3, H, W]`` in [0, 1] and their ground truth."""

    images: torch.Tensor
    extrinsics: torch.Tensor  # [B, S, 3, 4]
    intrinsics: torch.Tensor  # [B, S, 3, 3]
    depth: torch.Tensor  # [B, S, H, W], 0 where invalid
    valid: torch.Tensor  # [B, S, H, W] bool


def held_out_scenes(num_scenes: int, num_views: int, size: int, device=None) -> list[Scene]:
    """The first ``num_scenes`` held-out scenes (family :data:`HELD_OUT_SEED`), rendered on ``device``."""
    return list(SyntheticScenes(num_scenes, num_views, size, size, seed=HELD_OUT_SEED, device=device))


class ScenePool:
    """``size`` scenes of ``views`` views, rendered on ``device`` from the family ``seed``.

    Images are kept as uint8 and depth as float32 (16.6 MB per 24-view 224x224 scene). :meth:`refresh`
    re-renders the oldest slots with the next unseen scenes, so a long run keeps seeing new scenes.
    ``indices`` (which scene each slot holds) and ``next_index`` are all the state a checkpoint needs.
    """

    def __init__(self, size: int, views: int, image_size: int, seed: int, device: torch.device) -> None:
        if size < 1:
            raise ValueError(f"the scene pool needs at least one scene, got {size}")
        self.scenes = SyntheticScenes(_ENDLESS, views, image_size, image_size, seed=seed, device=device)
        self.views, self.device = views, device
        shape = (size, views)
        hw = (image_size, image_size)
        self.images = torch.empty(*shape, 3, *hw, dtype=torch.uint8, device=device)
        self.depth = torch.empty(*shape, *hw, device=device)
        self.extrinsics = torch.empty(*shape, 3, 4, device=device)
        self.intrinsics = torch.empty(*shape, 3, 3, device=device)
        self.indices = [-1] * size
        self.next_index = 0

    def __len__(self) -> int:
        return len(self.indices)

    def fill(self, indices: list[int] | None = None, next_index: int | None = None) -> None:
        """Render every slot: scenes ``0 .. size-1``, or the given ``indices`` (resuming a checkpoint)."""
        indices = list(range(len(self))) if indices is None else indices
        for slot, index in enumerate(indices):
            self._render(slot, index)
        self.next_index = len(self) if next_index is None else next_index

    def refresh(self, count: int) -> None:
        """Replace the ``count`` oldest scenes with the next unseen ones."""
        for _ in range(count):
            slot = self.next_index % len(self)
            self._render(slot, self.next_index)
            self.next_index += 1

    def sample(self, num_scenes: int, num_views: int, generator: torch.Generator) -> Batch:
        """``num_scenes`` distinct pool scenes, each with ``num_views`` of its views in random order."""
        if num_scenes > len(self) or num_views > self.views:
            raise ValueError(f"cannot draw {num_scenes} scenes x {num_views} views from a pool of "
                             f"{len(self)} x {self.views}")  # fmt: skip
        slots = torch.randperm(len(self), generator=generator)[:num_scenes]
        views = torch.rand(num_scenes, self.views, generator=generator).argsort(dim=-1)[:, :num_views]
        slots, views = slots[:, None].to(self.device), views.to(self.device)
        depth = self.depth[slots, views]
        return Batch(
            images=self.images[slots, views].float() / 255,
            extrinsics=self.extrinsics[slots, views],
            intrinsics=self.intrinsics[slots, views],
            depth=depth,
            valid=depth > 0,
        )

    def _render(self, slot: int, index: int) -> None:
        scene = self.scenes[index]
        self.images[slot] = (scene.images * 255).round().to(torch.uint8)
        self.depth[slot] = scene.depth
        self.extrinsics[slot] = scene.extrinsics
        self.intrinsics[slot] = scene.intrinsics
        self.indices[slot] = index
