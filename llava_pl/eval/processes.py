"""Evaluation over every process of a run: the questions split across ranks, the answers gathered on rank 0,
the scores shared back. Under a sharded strategy (FSDP2, DeepSpeed ZeRO-3) every forward pass is a collective,
so there every rank also answers the same number of batches (``lockstep``), padded with filler questions
whose answers are dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Share:
    """One rank's questions: ``items[:real]`` are its own, the rest fillers that keep the ranks in step."""

    items: list[Any]
    real: int


def split(items: Sequence[T], rank: int, world_size: int, lockstep: bool = False) -> Share:
    """Every ``world_size``-th item from ``rank`` (so long and short questions spread evenly). With
    ``lockstep`` every rank's share is padded with copies of the first item to the longest share's length, so
    any batch size gives every rank the same number of batches."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within a world of {world_size} processes")
    own = list(items[rank::world_size])
    longest = -(-len(items) // world_size)
    fillers = [items[0]] * (longest - len(own)) if lockstep and items else []
    return Share(own + fillers, len(own))


def interleave(pieces: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of ``split``: ``pieces[r]`` holds rank ``r``'s own items (fillers dropped), in order."""
    longest = max((len(piece) for piece in pieces), default=0)
    return [piece[index] for index in range(longest) for piece in pieces if index < len(piece)]


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a run; one process by default.

    Args:
        lockstep: the model's forward pass needs every rank (its parameters are sharded): every rank answers
            the same number of batches and generation runs until every rank's answers are done.
    """

    rank: int = 0
    world_size: int = 1
    lockstep: bool = False

    @classmethod
    def current(cls, lockstep: bool = False) -> Processes:
        """The processes of the default ``torch.distributed`` group (one process where there is none)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), lockstep)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def synced(self) -> bool:
        """Whether generation must run as many steps on every rank as on the slowest one."""
        return self.lockstep and self.world_size > 1

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values
