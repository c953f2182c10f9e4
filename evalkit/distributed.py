"""Processes launched together by ``torchrun``: which one this is, and how they share work.

Training (:mod:`finetune.train`, DDP) and evaluation (:mod:`evalkit.evaluate`) start the same
way, through :func:`start`. Evaluation shards its model calls: each process takes every
``world``-th batch (:meth:`Shard.mine`), then all of them gather every result
(:meth:`Shard.gather`), so they go on with the same numbers and rank 0 alone writes them.
Several nodes work the same way, by torchrun's own flags (``--nnodes``, ``--rdzv-endpoint``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes; one process by default."""

    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes results (rank 0 does; the others write nothing)."""
        return self.rank == 0

    def mine(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``world``-th, from its rank on.

        Interleaving (not cutting in blocks) keeps the shares even when ``items`` are sorted
        by cost, as batches sorted by length are.
        """
        return list(items[self.rank :: self.world])

    def all_gather(self, value: T) -> list[T]:
        """Every process's ``value``, by rank, on every process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def gather(self, part: Sequence[T]) -> list[T]:
        """The results of every process's :meth:`mine` share, in the order of the items."""
        parts = self.all_gather(list(part))
        out: list[T] = []
        for i in range(max(map(len, parts), default=0)):
            out.extend(p[i] for p in parts if i < len(p))
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def start(device: str | None = None) -> tuple[Shard, torch.device]:
    """This process's shard and device, from torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``); one process on ``device`` otherwise.

    Under torchrun it joins the process group (NCCL on CUDA, one GPU per local rank; gloo on
    the CPU, where the processes split the cores between them).
    """
    import torch

    from evalkit.models import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard(), pick_device(device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:  # processes launched together share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Shard(rank, world), dev
