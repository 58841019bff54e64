"""Streaming training data (``data=wds``): webdataset shards (local, or any URL webdataset opens, such as
``pipe:aws s3 cp s3://bucket/shard-000000.tar -``) and LLaVA JSON files, read as a stream with a shuffle buffer,
split over ranks and data loader workers, mixed by weight, with a fixed number of batches per epoch.

The pieces: ``wds_sources`` (what each source is read as), ``wds_stream`` (the order samples come in and how
they become micro-batches), and here the loader Lightning saves and resumes and the data module ``data=wds``
instantiates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from llava_pl.data.bad_samples import BadSampleReport
from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.dataset import SampleEncoder
from llava_pl.data.sampler import resume_position
from llava_pl.data.wds_sources import stream_source
from llava_pl.data.wds_stream import SampleStream

log = logging.getLogger(__name__)


class StreamLoader(DataLoader):
    """The stream's loader; Lightning saves its epoch and position, and a resume continues with a fresh draw
    seeded by both (streams cannot seek, so not the very samples the interrupted run would have seen)."""

    def __init__(self, stream: SampleStream, batches_done: Callable[[], int], num_workers: int) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.stream = stream
        self._batches_done = batches_done
        self._resumed = self._started = False

    def __iter__(self):
        # one iteration per epoch; after load_state_dict the first one continues the saved epoch
        if self._resumed:
            self._resumed = False
        elif self._started:
            self.stream.epoch, self.stream.resume_offset = self.stream.epoch + 1, 0
        self._started = True
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.stream.epoch, "batches_done": self._batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.epoch, self.stream.resume_offset = resume_position(state, len(self))
        self._resumed = True


class WdsDataModule(LlavaDataModule):
    """``data=wds``: the training set streamed (``SampleStream``); validation as in ``LlavaDataModule``.

    Args:
        train: a source or a list of sources ``{path, image_folder, weight, name, samples}``: shard folders,
            ``.tar`` paths or URLs (``{000000..000099}`` expands; ``samples`` gives their count), ``pipe:``
            commands, JSON files. A weight is how often each sample of its source comes per epoch, as in
            ``llava_pl.data.mixture``; the stream draws each next sample's source with those odds.
        samples_per_epoch: samples per epoch over all ranks; default the sources' sizes (known for shard folders
            and JSON files), each times its weight.
        shuffle_buffer: samples each worker shuffles among (1: no shuffling).
        resampled: draw units with replacement (the usual choice for several epochs and many ranks) instead of
            dealing each epoch's shuffled units out.
        shard_size: a JSON source's records per unit (as ``to_wds`` shards it).
    """

    def __init__(self, train: str | list, image_folder: str | None, samples_per_epoch: int | None = None,
                 shuffle_buffer: int = 1000, resampled: bool = True, shard_size: int = 1000,
                 **kwargs: Any) -> None:
        super().__init__(train, image_folder, **kwargs)
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.shard_size = shard_size
        self.epoch = 0

    def prepare_data(self) -> None:
        if self.val_path:
            from llava_pl.data.lengths import cached_scan

            cached_scan(self._dataset(self.val_path, self.image_folder), self.length_cache, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        self.bad_samples = BadSampleReport()
        self.streams = [stream_source(spec, self.shard_size) for spec in self.sources]
        self.train_set = None  # a stream: nothing to index (sample generations use the validation set)
        self.val_set, self._val_good = None, None
        if self.val_path:
            self.val_set = self._dataset(self.val_path, self.image_folder)
            self._val_good = self._scan(self.val_set).good
        total = self.samples_per_epoch
        unknown = [s.name for s in self.streams if s.size is None]
        if unknown and (total is None or len(self.streams) > 1):
            raise ValueError(f"data sources {unknown} have no known sample count: give each a `samples:` entry "
                             "(or, for a single source, set samples_per_epoch)")
        if total is None:
            total = round(sum(s.size * s.weight for s in self.streams))
        self.total_samples = total
        rows = [f"  {s.name}: {len(s.units)} unit(s), {s.size if s.size is not None else '?'} samples, "
                f"weight {s.weight:g}" for s in self.streams]
        log.info(f"streaming {total} samples per epoch from:\n" + "\n".join(rows))

    def train_samples_per_epoch(self) -> int:
        return self.total_samples

    @property
    def source_names(self) -> list[str]:
        return [stream.name for stream in self.streams]

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_batches_per_epoch(self) -> int:
        _, world_size = self._rank()
        batches = max(1, self.total_samples // (world_size * self.micro_batch_size))
        workers = max(1, self.num_workers)
        return -(-batches // workers) * workers

    def train_dataloader(self) -> DataLoader:
        if self._connection is None:
            raise RuntimeError("WdsDataModule.connect(...) must be called before the data is used")
        rank, world_size = self._rank()
        connection = self._connection
        encoder = SampleEncoder(connection["tokenizer"], connection["template"], connection["tokens_per_image"],
                                self.max_length)
        stream = SampleStream(self.streams, encoder, connection["image_transform"], self.collator.collator,
                              self.micro_batch_size, self.train_batches_per_epoch(), rank, world_size,
                              self.num_workers, self.seed, self.shuffle_buffer, self.resampled, self.on_bad_sample,
                              self.group_by_length, self.length_pool)
        return StreamLoader(stream, self._batches_done, self.num_workers)
