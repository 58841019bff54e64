"""The Lightning data module of one training stage; it gets the tokenizer and image processor late."""

from __future__ import annotations

import logging

import lightning as L
from torch.utils.data import DataLoader
from transformers import BaseImageProcessor, PreTrainedTokenizerBase

from llava_pl.data.bad_samples import BadSampleReport, DropBadSamples, OnBadSample, check_policy
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.lengths import cached_scan
from llava_pl.data.mixture import MixtureDataset, SourceSpec, source_specs
from llava_pl.data.images import ImageAspect, ImageTransform
from llava_pl.data.packing import PackingCollator
from llava_pl.data.sampler import LengthGrouping, ResumableDataLoader, ResumableSampler
from llava_pl.data.templates import Template

log = logging.getLogger(__name__)


class LlavaDataModule(L.LightningDataModule):
    """Train (and optional validation) LLaVA JSON files over one image folder, or shard folders written by
    ``llava_pl.to_wds``, or a weighted mixture of such sources.

    Call ``connect(...)`` once the model exists: the data needs the model's tokenizer, image processor
    and number of tokens per image. Before training every record is checked and measured once
    (``llava_pl.data.lengths``, cached in ``length_cache``): bad samples stop the run or are left out
    (``on_bad_sample``), and ``group_by_length`` orders each epoch by modality and token-accurate length.

    Args:
        train: a JSON/JSON Lines file or shard folder, or a list of sources ``{path, image_folder, weight,
            name}`` (``llava_pl.data.mixture``).
    """

    def __init__(
        self,
        train: str | list,
        image_folder: str | None,
        val: str | None = None,
        micro_batch_size: int = 16,
        max_length: int | None = 2048,
        image_aspect: ImageAspect = "pad",
        num_workers: int = 4,
        seed: int = 0,
        packing: bool = False,
        on_bad_sample: OnBadSample = "error",
        group_by_length: bool = False,
        length_pool: int = 50,
        length_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.val_path = val
        self.image_folder = image_folder
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length
        self.image_aspect = image_aspect
        self.num_workers = num_workers
        self.seed = seed
        self.train_path = train
        self.packing = packing  # each micro-batch in one padding-free row (llava_pl.data.packing)
        self.sources: list[SourceSpec] = source_specs(train, image_folder)
        self.on_bad_sample = check_policy(on_bad_sample)
        self.group_by_length = group_by_length
        self.length_pool = length_pool
        self.length_cache = length_cache
        self.bad_samples = BadSampleReport()  # found before training; those met while loading are in the batches
        self._prepared: dict[str, LlavaDataset] = {}
        self._connection: dict | None = None

    def connect(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_processor: BaseImageProcessor,
        tokens_per_image: int,
    ) -> None:
        self._connection = {
            "tokenizer": tokenizer,
            "template": template,
            "image_transform": ImageTransform(image_processor, self.image_aspect),
            "tokens_per_image": tokens_per_image,
        }
        collator = PackingCollator() if self.packing else LlavaCollator(tokenizer.pad_token_id)
        self.collator = DropBadSamples(collator, tokenizer.pad_token_id)

    def _dataset(self, path: str, image_folder: str | None = None, name: str | None = None) -> LlavaDataset:
        if self._connection is None:
            raise RuntimeError("LlavaDataModule.connect(...) must be called before the data is used")
        key = f"{path}|{image_folder}"
        if key not in self._prepared:
            self._prepared[key] = LlavaDataset(path, image_folder, max_length=self.max_length,
                                               on_bad_sample=self.on_bad_sample, name=name, **self._connection)
        return self._prepared[key]

    def _scan(self, dataset: LlavaDataset):
        result = cached_scan(dataset, self.length_cache, self.num_workers)
        self.bad_samples.update(result.apply(self.on_bad_sample))  # raises the first bad sample under "error"
        return result

    def prepare_data(self) -> None:
        """On one process per node, before ``setup``: the one pass over every record, cached for the others."""
        # no verdict here: every process gives it in setup, so that a bad sample under "error" stops all of
        # them alike instead of leaving the others waiting at the barrier after prepare_data
        for spec in self.sources:
            cached_scan(self._dataset(spec.path, spec.image_folder, spec.name), self.length_cache, self.num_workers)
        if self.val_path:
            cached_scan(self._dataset(self.val_path, self.image_folder), self.length_cache, self.num_workers)

    def setup(self, stage: str | None = None) -> None:
        self.bad_samples = BadSampleReport()
        datasets = [self._dataset(spec.path, spec.image_folder, spec.name) for spec in self.sources]
        self.train_set = MixtureDataset(datasets, self.sources, [self._scan(d) for d in datasets], self.seed)
        self.train_set.log_plan()
        self.val_set, self._val_good = None, None
        if self.val_path:
            self.val_set = self._dataset(self.val_path, self.image_folder)
            self._val_good = self._scan(self.val_set).good
        if self.bad_samples.total:
            log.warning(self.bad_samples.summary("bad samples left out before training"))

    def _sampler(self, dataset: LlavaDataset | MixtureDataset, shuffle: bool) -> ResumableSampler:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if isinstance(dataset, MixtureDataset):
            grouping = None
            if self.group_by_length and shuffle:
                grouping = LengthGrouping(dataset.lengths, dataset.has_image, self.micro_batch_size, self.length_pool)
            return ResumableSampler(len(dataset), self.seed, shuffle, rank, world_size, dataset.epoch_indices,
                                    grouping)
        return ResumableSampler(len(dataset), self.seed, shuffle, rank, world_size, self._val_good)

    def train_batches_per_epoch(self) -> int:
        """Micro-batches each rank trains on per epoch (the last incomplete batch is dropped)."""
        return len(self._sampler(self.train_set, shuffle=True)) // self.micro_batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled per epoch by ``(seed, epoch)``, sharded over ranks, resumable mid-epoch."""
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.micro_batch_size,
            sampler=self._sampler(self.train_set, shuffle=True),
            num_workers=self.num_workers,
            collate_fn=self.collator,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
            batches_done=self._batches_done,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.micro_batch_size,
            sampler=self._sampler(self.val_set, shuffle=False),
            num_workers=self.num_workers,
            collate_fn=self.collator,
        )

    def _batches_done(self) -> int:
        """Micro-batches of the current epoch the training loop has processed."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_samples_per_epoch(self) -> int:
        """Samples an epoch draws: each source's good samples times its weight."""
        return len(self.train_set.epoch_indices)

    @property
    def source_names(self) -> list[str]:
        """The training sources' names, as each sample's ``source`` and ``data/samples/<name>`` give them."""
        return list(self.train_set.plan)
