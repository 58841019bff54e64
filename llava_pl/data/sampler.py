"""A sampler and data loader that can resume part-way through an epoch (exact resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    """This rank's share of a per-epoch order fixed by ``(seed, epoch)``, optionally starting part-way in.

    Every rank gets the same number of indices (the order is padded by repeating its start), so every
    rank runs the same number of steps.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, epoch: int, position: int) -> None:
        """The next iteration yields epoch ``epoch`` from this rank's ``position``-th index on."""
        self.epoch = epoch
        self._skip = position

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        padded = len(self) * self.world_size
        order += order[: padded - len(order)]
        share = order[self.rank :: self.world_size]
        start, self._skip = self._skip, 0
        return iter(share[start:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position Lightning saves in checkpoints and restores on resume.

    Lightning saves the state of any loader with ``state_dict``/``load_state_dict``. The position is
    the number of batches the training loop has processed (from ``batches_done``), not the number this
    loader has handed out, which runs ahead by the prefetched batches.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self._batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        if done >= len(self):  # saved at the end of an epoch: resume at the start of the next
            epoch, done = epoch + 1, 0
        self.sampler.start_at(epoch, done * self.batch_size)
