"""Distillation on several processes with ``torch.distributed``: one process per GPU (or CPU worker), started
by ``torchrun``, DDP by default and FSDP2 (``fully_shard``) on request.

Only what the training loop needs from the process group: which process this is, the group itself for the
command line, wrapping the models, switching gradient synchronisation off between micro-batches, reductions
across processes, and the sampler that splits every batch of scenes over the processes. Without a process
group every function is the single-process no-op, so one code path serves one process and many.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

PARALLEL = ("ddp", "fsdp")


class DistributedError(ValueError):
    """The process group cannot be set up as asked (device, launcher environment)."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``rank`` 0 of 1 without a process group)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, shows progress and writes files."""
        return self.rank == 0


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def backend_for(device: torch.device) -> str:
    """``nccl`` between GPUs, ``gloo`` between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device: str) -> Iterator[torch.device]:
    """The device this process runs on, inside the process group that ``torchrun`` asked for.

    Under ``torchrun`` (any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...; single- or
    multi-node rendezvous) ``cuda`` means ``cuda:LOCAL_RANK``, the backend follows the device
    (:func:`backend_for`) and the group is destroyed on exit. Elsewhere, or when the caller already set up a
    group, it only resolves ``device``.
    """
    from lite3r.predict import resolve_device

    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        yield resolve_device(device)
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None and int(os.environ["WORLD_SIZE"]) > 1:
            raise DistributedError(
                f"--device {device}: under torchrun each process takes the GPU cuda:LOCAL_RANK; pass --device cuda"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process with LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                "start at most that many processes per node (torchrun --nproc_per_node)"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev), device_id=dev if dev.type == "cuda" else None)
    try:
        yield dev
    finally:
        dist.destroy_process_group()


def parallelize(teacher: nn.Module, student: nn.Module, parallel: str, device: torch.device) -> nn.Module:
    """Prepare both models for data-parallel training; returns the module the training step calls.

    Rank 0's weights are copied to every process first (as DDP does for its module), so processes that built
    the models differently still train one model. ``ddp``: the student is wrapped (its gradients, only
    ``proj_lin``'s, are averaged); the teacher stays replicated. ``fsdp``: teacher and student are sharded in
    place with ``fully_shard`` (every transformer block, then each top-level part, then the root), which
    divides their weight memory by the number of processes. Without a process group: the student as it is.
    """
    if parallel not in PARALLEL:
        raise DistributedError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if not (dist.is_available() and dist.is_initialized()):
        return student
    _broadcast_from_rank0(teacher)
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(student, device_ids=[device] if device.type == "cuda" else None)
    _broadcast_from_rank0(student)
    for model in (teacher, student):
        _fully_shard(model)
    return student


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Forward and backward of one micro-batch, with the gradient reduction across processes on or off
    (off for all but the last micro-batch of an optimizer step: gradient accumulation)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes, in place (every process gets the sum)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def all_max(value: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor(value, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded FSDP2 tensor (DTensor) gathered whole; any other tensor as it is. Collective for DTensors."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _broadcast_from_rank0(module: nn.Module) -> None:
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def _fully_shard(model: nn.Module) -> None:
    """FSDP2 units: each transformer block (gathered only while it runs), each top-level part (heads,
    aggregator rest), the root. A part that never runs (VGGT's track head) is then never gathered."""
    from torch.distributed.fsdp import fully_shard

    from lite3r.models.layers import Block

    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block)
    for part in model.children():
        fully_shard(part)
    fully_shard(model)


def stream_positions(batch_size: int, start: int, steps: int, world: World) -> Iterator[int]:
    """This process's positions in the global stream of scenes for optimizer steps ``start .. steps - 1``:
    step ``s`` is positions ``s * batch_size ..`` up to the next step's, split into ``world.size`` equal
    contiguous parts, of which this process takes part ``world.rank``."""
    per_process = batch_size // world.size
    for step in range(start, steps):
        first = step * batch_size + world.rank * per_process
        yield from range(first, first + per_process)


class SceneSampler(torch.utils.data.Sampler[int]):
    """A distributed sampler over scenes: this process's dataset indices for optimizer steps ``start ..
    steps - 1`` (see :func:`stream_positions`).

    The global stream is the dataset in a seeded random order per epoch (``shuffle``), epochs one after the
    other. It does not depend on the number of processes, so N processes train on exactly the scenes one
    process would, and a run resumed on another number of processes continues the same stream.
    (``torch.utils.data.DistributedSampler`` pads each epoch to a multiple of N: its stream depends on N.)
    """

    def __init__(
        self, num_scenes: int, batch_size: int, steps: int, *, start: int = 0, world: World = World(),
        seed: int = 0, shuffle: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_scenes, self.batch_size, self.steps, self.start = num_scenes, batch_size, steps, start
        self.world, self.seed, self.shuffle = world, seed, shuffle
        self._orders: dict[int, torch.Tensor] = {}

    def index(self, position: int) -> int:
        epoch, i = divmod(position, self.num_scenes)
        if not self.shuffle:
            return i
        if epoch not in self._orders:  # keep one epoch's order: positions arrive in increasing order
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.num_scenes, generator=generator)}
        return int(self._orders[epoch][i])

    def __iter__(self) -> Iterator[int]:
        return map(self.index, stream_positions(self.batch_size, self.start, self.steps, self.world))

    def __len__(self) -> int:
        return (self.steps - self.start) * (self.batch_size // self.world.size)
