"""A sampler and data loader that can resume part-way through an epoch (exact resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from llava_pl.data.grouping import modality_length_order


@dataclass
class LengthGrouping:
    """Token-accurate lengths and modalities per data set index, and the micro-batch size to group for."""

    lengths: np.ndarray
    has_image: np.ndarray
    batch_size: int
    pool: int = 50


class ResumableSampler(Sampler[int]):
    """This rank's share of a per-epoch order fixed by ``(seed, epoch)``, optionally starting part-way in.

    Every rank gets the same number of indices (the order is padded by repeating its start), so every
    rank runs the same number of steps. ``indices`` restricts the order to those data set indices (the
    good samples); ``grouping`` orders them by modality and length (``grouping.modality_length_order``).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 indices: Sequence[int] | None = None, grouping: LengthGrouping | None = None) -> None:
        self.indices = list(range(size)) if indices is None else list(indices)
        self.size = len(self.indices)
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.grouping = grouping
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, epoch: int, position: int) -> None:
        """The next iteration yields epoch ``epoch`` from this rank's ``position``-th index on."""
        self.epoch = epoch
        self._skip = position

    def __len__(self) -> int:
        if self.grouping is not None:
            group = self.grouping.batch_size * self.world_size
            return -(-self.size // group) * self.grouping.batch_size if self.size else 0
        return -(-self.size // self.world_size)

    def share(self) -> list[int]:
        """This rank's indices of the current epoch, from its start."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.grouping is not None:
            grouping = self.grouping
            steps = modality_length_order(self.indices, grouping.lengths, grouping.has_image, grouping.batch_size,
                                          self.world_size, generator, grouping.pool)
            return [index for step in steps for index in step[self.rank]]
        if self.shuffle:
            order = [self.indices[i] for i in torch.randperm(self.size, generator=generator).tolist()]
        else:
            order = list(self.indices)
        padded = len(self) * self.world_size
        order += order[: padded - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        start, self._skip = self._skip, 0
        return iter(self.share()[start:])


def resume_position(state: dict[str, int], batches_per_epoch: int) -> tuple[int, int]:
    """The (epoch, batches done) a loader saved as ``state`` resumes at: a save at the end of an epoch resumes at
    the start of the next."""
    epoch, done = state["epoch"], state["batches_done"]
    return (epoch + 1, 0) if done >= batches_per_epoch else (epoch, done)


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
        epoch, done = resume_position(state, len(self))
        self.sampler.start_at(epoch, done * self.batch_size)
