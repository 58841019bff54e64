"""The stream of micro-batches one rank trains on (``data=wds``).

Each epoch a source's units (``llava_pl.data.wds_sources``) are shuffled by the seed, the same on every rank,
and dealt out to the ranks' workers; with ``resampled`` each worker instead draws units at random, with
replacement, forever. Either way every rank yields exactly ``samples_per_epoch / (world size ×
micro_batch_size)`` micro-batches (rounded up to a multiple of the workers), so no rank waits for another at
the end of an epoch. A JSON file and the shards converted from it stream the same samples in the same order.

Shards with pre-processed images (``to_wds vision=...``) are only normalised; the manifest of a shard folder, or
else each sample's ``preprocessing.json``, must say they were made for this run's image transform.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from llava_pl.data.bad_samples import OnBadSample
from llava_pl.data.conversation import Conversation, SampleError, parse_record
from llava_pl.data.dataset import SampleEncoder
from llava_pl.data.images import ImageTransform, check_preprocessing, input_size
from llava_pl.data.records import PREPROCESSING_MEMBER, decode_image_bytes, decode_pixels, image_member, pixels_member
from llava_pl.data.wds_sources import StreamSource, Unit


def _raise(error: Exception) -> bool:
    raise error


class SampleStream(IterableDataset):
    """Collated micro-batches from the sources, for one rank; see the module docstring for the order.

    Bad samples are left out of the stream (``on_bad_sample=skip``; the next good sample takes the place in
    the batch) and listed in the next batch's ``bad_samples``, or raise (``error``).
    """

    def __init__(
        self,
        sources: list[StreamSource],
        encoder: SampleEncoder,
        image_transform: ImageTransform,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        batch_size: int,
        batches: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = True,
        on_bad_sample: OnBadSample = "error",
        group_by_length: bool = False,
        length_pool: int = 50,
    ) -> None:
        self.sources = sources
        self.encoder = encoder
        self.image_transform = image_transform
        self.image_size = input_size(image_transform.processor)
        self.collator = collator
        self.batch_size = batch_size
        self.batches_per_worker = -(-batches // max(1, num_workers))
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.on_bad_sample = on_bad_sample
        self.group_by_length = group_by_length
        self.length_pool = length_pool
        self.epoch = 0
        self.resume_offset = 0  # batches already trained this epoch before a resume: a fresh draw after them
        for source in sources:
            if source.preprocessing is not None:
                check_preprocessing(source.preprocessing, image_transform, source.folder)
        self._checked: set[bytes] = set()  # the samples' preprocessing.json values found to match

    def __len__(self) -> int:
        return self.batches_per_worker * max(1, self.num_workers)

    def _rng(self, *parts: object) -> random.Random:
        return random.Random(repr((self.seed, self.epoch, *parts)))

    def _units(self, number: int, worker: int, workers: int) -> Iterator[tuple[Unit, int, int]]:
        """Units for this rank's worker, forever, as ``(unit, keep_every, keep_at)``: when there are fewer units
        than workers of all ranks, every worker reads all units and keeps every ``keep_every``-th sample."""
        source = self.sources[number]
        total, me = self.world_size * workers, self.rank * workers + worker
        rng = self._rng("units", number, self.rank, worker, self.resume_offset)
        if self.resampled:
            while True:
                yield rng.choice(source.units), 1, 0
        for passes in range(1 << 62):
            order = list(source.units)
            random.Random(repr((self.seed, self.epoch, "order", number, passes))).shuffle(order)
            if len(order) >= total:
                yield from ((unit, 1, 0) for unit in order[me::total])
            else:
                yield from ((unit, total, me) for unit in order)

    def _raw(self, number: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples: ``{"__key__", "json": bytes or record, image members}``, endlessly."""
        handler = _raise if self.on_bad_sample == "error" else wds.warn_and_continue
        source = self.sources[number]
        empty_units = 0
        for unit, every, at in self._units(number, worker, workers):
            kind, where = unit
            if kind == "shard":
                samples = wds.tarfile_to_samples(handler=handler)(iter([{"url": where}]))
            else:
                samples = ({"__key__": f"{i:09d}", "__index__": i} for i in range(*where))
            produced = False
            for position, sample in enumerate(samples):
                if position % every == at:
                    produced = True
                    yield sample
            empty_units = 0 if produced else empty_units + 1
            if empty_units > 2 * len(source.units) + 2:
                raise ValueError(f"data source {source.name} yields no samples for rank {self.rank}")

    def _mixed(self, worker: int, workers: int) -> Iterator[tuple[StreamSource, dict[str, Any]]]:
        streams = [self._raw(number, worker, workers) for number in range(len(self.sources))]
        # as in a map-style mixture, a weight is how often each sample of its source comes per epoch
        weights = [source.weight * (source.size or 0) for source in self.sources]
        rng = self._rng("mix", self.rank, worker, self.resume_offset)
        while True:
            pick = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
            yield self.sources[pick], next(streams[pick])

    def _encode(self, source: StreamSource, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        where = source.records.name if source.records is not None else raw.get("__url__", source.name)
        if source.records is not None:
            record = source.records.record(raw["__index__"])
        else:
            try:
                record = json.loads(raw["json"])
            except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise SampleError(where, key, f"the sample's json does not parse ({error})") from error
        conversation = parse_record(record, where, int(key) if key.isdigit() else 0)
        tokens = self.encoder(conversation, where)
        pixels = [self._image(source, raw, conversation, position, relative, where)
                  for position, relative in enumerate(conversation.images)]
        pixel_values = torch.stack(pixels) if pixels else torch.zeros(0, 3, *self.image_size)
        return {"id": conversation.sample_id, "input_ids": torch.tensor(tokens.input_ids),
                "labels": torch.tensor(tokens.labels), "pixel_values": pixel_values, "source": source.name}

    def _image(self, source: StreamSource, raw: dict[str, Any], conversation: Conversation, position: int,
               relative: str, where: str) -> torch.Tensor:
        if source.records is not None:
            with source.records.open_image(raw["__index__"], conversation.sample_id, position, relative) as image:
                return self.image_transform(image)
        preprocessed = PREPROCESSING_MEMBER in raw
        member = pixels_member(position) if preprocessed else image_member(position, relative)
        if member not in raw:
            raise SampleError(where, conversation.sample_id, f"no image member {raw['__key__']}.{member}",
                              "missing_image")
        at = f"{where}:{raw['__key__']}.{member}"
        if preprocessed:
            self._check_sample(raw[PREPROCESSING_MEMBER], where)
            return self.image_transform.normalise(decode_pixels(raw[member], where, conversation.sample_id, at))
        with decode_image_bytes(raw[member], where, conversation.sample_id, at) as image:
            return self.image_transform(image)

    def _check_sample(self, made_for: bytes, where: str) -> None:
        """A streamed sample's pre-processed images must be made for this run (``ValueError``, not a bad sample)."""
        if made_for not in self._checked:
            check_preprocessing(json.loads(made_for), self.image_transform, where)
            self._checked.add(made_for)

    def _shuffled(self, worker: int, workers: int) -> Iterator[tuple[StreamSource, dict[str, Any]]]:
        items = self._mixed(worker, workers)
        if self.shuffle_buffer <= 1:
            return items
        rng = self._rng("shuffle", self.rank, worker, self.resume_offset)
        return wds.filters._shuffle(items, self.shuffle_buffer, max(1, self.shuffle_buffer // 10), rng=rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        bad: list[tuple[str, str, str]] = []
        pending: list[dict[str, Any]] = []
        produced = 0
        for source, raw in self._shuffled(worker, workers):
            try:
                pending.append(self._encode(source, raw))
            except SampleError as error:
                if self.on_bad_sample == "error":
                    raise
                bad.append((error.sample_id, error.reason, str(error)))
                continue
            for samples in self._ready(pending):
                batch = self.collator(samples)
                if bad:
                    batch["bad_samples"], bad = bad, []
                batch["sources"] = [sample["source"] for sample in samples]
                yield batch
                produced += 1
                if produced >= self.batches_per_worker:
                    return

    def _ready(self, pending: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Full micro-batches to emit now, taken out of ``pending``. With ``group_by_length``, once
        ``length_pool`` batches are pending, each modality sorted by length and cut into batches (leftovers wait)."""
        if not self.group_by_length:
            if len(pending) < self.batch_size:
                return []
            batch = pending[: self.batch_size]
            del pending[: self.batch_size]
            return [batch]
        if len(pending) < self.batch_size * self.length_pool:
            return []
        batches, left = [], []
        for modality in (True, False):
            group = sorted((s for s in pending if (s["pixel_values"].shape[0] > 0) == modality),
                           key=lambda s: s["input_ids"].shape[0])
            full = len(group) - len(group) % self.batch_size
            batches += [group[at:at + self.batch_size] for at in range(0, full, self.batch_size)]
            left += group[full:]
        self._rng("group", self.rank, len(pending)).shuffle(batches)
        pending[:] = left
        return batches
