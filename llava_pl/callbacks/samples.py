"""What the model says about a fixed set of validation images while it trains: a table of image, prompt,
answer and reference every N optimizer steps and at the end of the stage, on every logger."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.conversation import SampleError
from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.mixture import MixtureDataset
from llava_pl.distributed.sharding import shards_parameters
from llava_pl.generate import Answerer

log = logging.getLogger(__name__)

COLUMNS = ["step", "id", "image", "prompt", "answer", "reference"]


@dataclass(frozen=True)
class SampleInput:
    """One fixed sample: its first user turn (image placeholder removed) and the first assistant turn."""

    sample_id: str
    image_path: str | None  # relative to the data's image folder
    prompt: str
    reference: str
    pixels: torch.Tensor | None
    image: Image.Image | None


@dataclass(frozen=True)
class SampleRow:
    step: int
    sample: SampleInput
    answer: str

    def text_fields(self) -> list[str]:
        return [str(self.step), self.sample.sample_id, self.sample.image_path or "", self.sample.prompt,
                self.answer, self.sample.reference]


def pick_samples(dataset: LlavaDataset | MixtureDataset, count: int) -> list[SampleInput]:
    """``count`` records spread evenly over the data set, read as the stage's data pipeline reads them; a record
    that training skips as bad (too long for ``max_length``, an image that does not decode, ...) is left out."""
    indices = sorted({round(position * len(dataset) / count) for position in range(count)} - {len(dataset)})
    samples = []
    for index in indices:
        try:
            dataset.check(index)  # the length pass's verdict: what it leaves out of training is no prompt either
            conversation = dataset.conversation(index)
            path = conversation.images[0] if conversation.images else None
            image = None
            if path is not None:
                with dataset.open_image(index, conversation, 0) as opened:  # from a folder or a shard
                    image = opened.convert("RGB")
        except SampleError:
            continue  # a bad sample: data.on_bad_sample=skip leaves it out of training too
        user = next(message for message in conversation.messages if message.role == "user")
        reference = next(message for message in conversation.messages if message.role == "assistant")
        pixels = dataset.image_tensor(index, conversation, 0) if image is not None else None
        samples.append(SampleInput(conversation.sample_id, path, user.content.replace(IMAGE_PLACEHOLDER, "").strip(),
                                   reference.content.strip(), pixels, image))
    return samples


class SampleGenerations(Callback):
    """Answers ``num_samples`` fixed validation samples (the training data's if the stage has no validation
    set) every ``every_n_steps`` optimizer steps and once at the end of the stage, on rank 0 (other ranks
    wait; not under a sharded strategy). The answers go to every logger:

    - wandb: a ``wandb.Table`` under ``key`` (step, id, image, prompt, answer, reference);
    - CSV: appended to ``samples.csv`` beside the logger's ``metrics.csv``;
    - TensorBoard: a text table under ``key``;
    - and the console log.

    The prompt is the data's first user turn; the stage's template decides what the model sees of it (the
    ``plain`` template of ``align`` keeps only the image), greedy unless ``sampling`` says otherwise.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        num_samples: int = 8,
        max_new_tokens: int = 32,
        key: str = "samples",
        **sampling: object,
    ) -> None:
        if every_n_steps <= 0 or num_samples <= 0:
            raise ValueError(f"every_n_steps and num_samples must be positive, got {every_n_steps}, {num_samples}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.key = key
        self.sampling = sampling
        self.samples: list[SampleInput] = []
        self.rows: list[SampleRow] = []  # everything generated this stage, for callers and tests
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            data = trainer.datamodule
            dataset = data.val_set or data.train_set  # a stream (data=wds) has no train_set to pick from
            self.samples = pick_samples(dataset, self.num_samples) if dataset is not None else []
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self._last_step and step % self.every_n_steps == 0:
            self._generate_and_log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._generate_and_log(trainer, pl_module)

    def _generate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = self._last_step = trainer.global_step
        if shards_parameters(trainer.strategy):  # rank 0 alone cannot run a sharded model: it would wait forever
            rank_zero_warn(f"sample generations are off under {type(trainer.strategy).__name__}")
            return
        if trainer.is_global_zero and self.samples:
            rows = self.generate(trainer, pl_module, step)
            self.rows += rows
            for logger in trainer.loggers:
                write_rows(logger, rows, step, self.key)
            lines = [f"  [{row.sample.sample_id}] {row.sample.prompt!r} → {row.answer!r} "
                     f"(reference {row.sample.reference!r})" for row in rows]
            log.info(f"samples at step {step}:\n" + "\n".join(lines))
        trainer.strategy.barrier()

    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> list[SampleRow]:
        data = trainer.datamodule
        dataset = data.val_set or data.train_set
        answerer = Answerer(pl_module.model, dataset.tokenizer, dataset.template, self.max_new_tokens,
                            batch_size=len(self.samples), **self.sampling)
        device = trainer.strategy.root_device
        images = [None if sample.pixels is None else sample.pixels.to(device) for sample in self.samples]
        try:
            with trainer.precision_plugin.forward_context():
                answers = answerer([sample.prompt for sample in self.samples], images)
        finally:
            pl_module.train()  # the module's own train(): frozen parts stay in eval mode
        return [SampleRow(step, sample, answer) for sample, answer in zip(self.samples, answers)]


def write_rows(logger: Logger, rows: list[SampleRow], step: int, key: str) -> None:
    """The rows in the form each logger keeps tables in; loggers without one are skipped."""
    if isinstance(logger, WandbLogger):
        import wandb

        data = [[row.step, row.sample.sample_id, wandb.Image(row.sample.image) if row.sample.image else None,
                 row.sample.prompt, row.answer, row.sample.reference] for row in rows]
        logger.log_table(key=key, columns=COLUMNS, data=data, step=step)
    elif isinstance(logger, CSVLogger):
        path = Path(logger.log_dir) / f"{key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with path.open("a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(COLUMNS)
            writer.writerows(row.text_fields() for row in rows)
    elif isinstance(logger, TensorBoardLogger):
        cells = [" | ".join(field.replace("|", "\\|") for field in row.text_fields()) for row in rows]
        table = "\n".join([" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS), *cells])
        logger.experiment.add_text(key, table, global_step=step)
