"""The frozen teacher's targets on disk: per scene, its outputs and the outputs of the attention layers the
student's SLA layers are compared with, computed once and read back in every later epoch and resumed run.

Layout: ``<out>/teacher_cache/manifest.json`` (what the targets depend on) and one
``scene_<index>.safetensors`` per dataset index, tensors named ``output/<key>`` and ``attention/<layer>``,
stored in the dtype the teacher produced them in, so a cached target is bit-identical to a recomputed one.
The cache is filled before training with the scenes split over the processes (index ``i`` by rank
``i mod N``): each process computes and writes its own shard. Training then reads whichever scene the
sampler hands a process, so the folder must be one that every process sees (as ``checkpoint.pt`` must be
for a resume on any number of processes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lite3r._io import atomic_write_bytes
from lite3r.distill.distributed import World, barrier

CACHE_DIR = "teacher_cache"
MANIFEST = "manifest.json"


class TeacherCacheError(ValueError):
    """A cache folder made for other settings, or one this process cannot see."""


class TeacherCache:
    """Open (and on a fresh run empty) ``<out>/teacher_cache``; every process must call this together.

    ``manifest``: what the targets depend on (scenes, layers, precision); a resumed run whose manifest
    differs is refused rather than trained on stale targets.
    """

    def __init__(self, out: Path, manifest: dict[str, Any], *, fresh: bool, world: World) -> None:
        self.folder = Path(out) / CACHE_DIR
        manifest = {"format": "lite3r.teacher_cache", "version": 1, **manifest}
        path = self.folder / MANIFEST
        if world.is_main:  # never raise before the barrier: the other processes would wait forever
            if fresh:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            if not path.is_file():
                atomic_write_bytes(path, json.dumps(manifest, indent=1).encode())
        barrier()
        if not path.is_file():
            raise TeacherCacheError(
                f"{path} (written by rank 0) is not visible to rank {world.rank}: put --out on a filesystem that "
                "every process sees"
            )
        if json.loads(path.read_text()) != manifest:
            raise TeacherCacheError(
                f"{self.folder} holds teacher targets for other settings ({path}); start over (--no-resume)"
            )

    def path(self, index: int) -> Path:
        return self.folder / f"scene_{index:06d}.safetensors"

    def missing(self, num_scenes: int, world: World) -> list[int]:
        """This process's shard of the scenes that have no cached targets yet."""
        return [i for i in range(world.rank, num_scenes, world.size) if not self.path(i).is_file()]

    def save(self, index: int, outputs: dict[str, torch.Tensor], attention: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        tensors = {f"output/{k}": v for k, v in outputs.items()} | {f"attention/{k}": v for k, v in attention.items()}
        atomic_write_bytes(self.path(index), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))

    def load(self, index: int, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        try:
            tensors = load_file(self.path(index), device=str(device))
        except FileNotFoundError:
            raise TeacherCacheError(f"{self.path(index)} is missing (deleted during training?)") from None
        parts: dict[str, dict[str, torch.Tensor]] = {"output": {}, "attention": {}}
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            parts[kind][name] = value
        return parts["output"], parts["attention"]
