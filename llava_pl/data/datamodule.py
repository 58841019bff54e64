"""The Lightning data module of one training stage; it gets the tokenizer and image processor late."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader
from transformers import BaseImageProcessor, PreTrainedTokenizerBase

from llava_pl.data.collate import LlavaCollator
from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.images import ImageAspect, ImageTransform
from llava_pl.data.sampler import ResumableDataLoader, ResumableSampler
from llava_pl.data.templates import Template


class LlavaDataModule(L.LightningDataModule):
    """Train (and optional validation) LLaVA JSON files over one image folder.

    Call ``connect(...)`` once the model exists: the data needs the model's tokenizer, image processor
    and number of tokens per image.
    """

    def __init__(
        self,
        train: str,
        image_folder: str,
        val: str | None = None,
        micro_batch_size: int = 16,
        max_length: int | None = 2048,
        image_aspect: ImageAspect = "pad",
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_path = train
        self.val_path = val
        self.image_folder = image_folder
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length
        self.image_aspect = image_aspect
        self.num_workers = num_workers
        self.seed = seed
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
        self.collator = LlavaCollator(tokenizer.pad_token_id)

    def _dataset(self, path: str) -> LlavaDataset:
        if self._connection is None:
            raise RuntimeError("LlavaDataModule.connect(...) must be called before the data is used")
        return LlavaDataset(path, self.image_folder, max_length=self.max_length, **self._connection)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset(self.train_path)
        self.val_set = self._dataset(self.val_path) if self.val_path else None

    def _sampler(self, dataset: LlavaDataset, shuffle: bool) -> ResumableSampler:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return ResumableSampler(len(dataset), self.seed, shuffle, rank, world_size)

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
