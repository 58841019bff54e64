"""A map-style data set over LLaVA records (a JSON/JSON Lines file and its image folder, or converted shards)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IGNORE_INDEX
from llava_pl.data.bad_samples import BadSampleReport, OnBadSample, check_policy
from llava_pl.data.conversation import Conversation, SampleError, parse_record
from llava_pl.data.images import ImageTransform, check_preprocessing, input_size
from llava_pl.data.records import JsonRecords, RecordSource, open_source
from llava_pl.data.templates import Template
from llava_pl.data.tokenization import TokenizedSample, tokenize_segments


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSON array or a JSON Lines file of records (a line that does not parse is an error)."""
    source = JsonRecords(path, None)
    return [source.record(index) for index in range(len(source))]


class SampleEncoder:
    """A parsed conversation → token ids and labels, refusing what cannot train (``SampleError`` with a reason)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: Template, tokens_per_image: int,
                 max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length

    def __call__(self, conversation: Conversation, source: str) -> TokenizedSample:
        try:
            segments = self.template.segments(conversation.messages, self.tokenizer)
        except ValueError as error:
            raise SampleError(source, conversation.sample_id, str(error), "template") from error
        tokens = tokenize_segments(segments, self.tokenizer, self.tokens_per_image, self.max_length,
                                   self.template.add_special_tokens)
        if tokens.num_images < len(conversation.images):
            raise SampleError(source, conversation.sample_id,
                              f"does not fit max_length={self.max_length} without cutting image "
                              f"{tokens.num_images + 1} of {len(conversation.images)}", "too_long")
        if all(label == IGNORE_INDEX for label in tokens.labels):
            raise SampleError(source, conversation.sample_id,
                              f"no answer token within max_length={self.max_length}", "too_long")
        return tokens


@dataclass
class ScanResult:
    """What one pass over every record found: token-accurate lengths and the bad samples."""

    lengths: np.ndarray  # per data set index: text + image tokens after truncation; 0 for a bad sample
    has_image: np.ndarray  # per data set index
    bad: list[tuple[int, str, str, str, str]]  # (index, source, sample id, problem, reason)

    @property
    def good(self) -> list[int]:
        """Data set indices of the good samples."""
        bad = {entry[0] for entry in self.bad}
        return [index for index in range(len(self.lengths)) if index not in bad]

    def errors(self) -> list[SampleError]:
        return [SampleError(source, sample_id, problem, reason) for _, source, sample_id, problem, reason in self.bad]

    def report(self) -> BadSampleReport:
        report = BadSampleReport()
        for error in self.errors():
            report.add(error)
        return report

    def apply(self, policy: OnBadSample) -> BadSampleReport:
        """Raises the first bad sample under ``error``; returns the per-reason counts under ``skip``."""
        errors = self.errors()
        if errors and policy == "error":
            raise errors[0]
        return self.report()


class LlavaDataset(Dataset):
    """Yields ``{"id", "input_ids", "labels", "pixel_values", "source"}`` per record; errors name the file and
    sample.

    With ``on_bad_sample="skip"`` a record that fails when it is read (an image that does not decode) yields
    ``{"id", "bad": (reason, message)}`` instead, which the collator drops and counts. ``scan()`` finds every
    other kind of bad sample ahead of training, so that samplers never draw them.

    Shards whose images were pre-processed at conversion skip decoding and resizing; they must have been made
    for this ``image_transform`` (else ``ValueError``).

    Args:
        path: a LLaVA JSON/JSON Lines file, or a folder of shards written by ``llava_pl.to_wds``.
        image_folder: the folder the JSON's image paths are relative to (unused for shards).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_folder: str | os.PathLike | None,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        tokens_per_image: int,
        max_length: int | None = None,
        on_bad_sample: OnBadSample = "error",
        source: RecordSource | None = None,
        name: str | None = None,
    ) -> None:
        self.path = str(path)
        self.source = source if source is not None else open_source(path, image_folder)
        self.name = name or os.path.basename(self.path.rstrip("/"))
        self.image_folder = image_folder
        self.tokenizer = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.on_bad_sample = check_policy(on_bad_sample)
        self.encoder = SampleEncoder(tokenizer, template, tokens_per_image, max_length)
        if self.source.preprocessing is not None:
            check_preprocessing(self.source.preprocessing, image_transform, self.source.name)

    def __len__(self) -> int:
        return len(self.source)

    def conversation(self, index: int) -> Conversation:
        return parse_record(self.source.record(index), self.source.name, index)

    def encode(self, index: int) -> tuple[Conversation, TokenizedSample]:
        conversation = self.conversation(index)
        return conversation, self.encoder(conversation, self.source.name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            conversation, tokens = self.encode(index)
            pixel_values = self.load_images(index, conversation)
        except SampleError as error:
            if self.on_bad_sample == "error":
                raise
            return {"id": error.sample_id, "bad": (error.reason, str(error)), "source": self.name}
        return {
            "id": conversation.sample_id,
            "input_ids": torch.tensor(tokens.input_ids, dtype=torch.long),
            "labels": torch.tensor(tokens.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "source": self.name,
        }

    def open_image(self, index: int, conversation: Conversation, position: int) -> Image.Image:
        """The sample's ``position``-th image as stored (decoded, before preprocessing)."""
        return self.source.open_image(index, conversation.sample_id, position, conversation.images[position])

    def load_images(self, index: int, conversation: Conversation) -> torch.Tensor:
        """``(num_images, C, H, W)``; an empty first dimension for a text-only sample."""
        if not conversation.images:
            height, width = input_size(self.image_transform.processor)
            return torch.zeros(0, 3, height, width)
        return torch.stack([self.image_tensor(index, conversation, position)
                            for position in range(len(conversation.images))])

    def image_tensor(self, index: int, conversation: Conversation, position: int) -> torch.Tensor:
        """The sample's ``position``-th image as the model sees it, ``(C, H, W)``."""
        if self.source.preprocessing is not None:
            return self.image_transform.normalise(self.source.open_pixels(index, conversation.sample_id, position))
        with self.open_image(index, conversation, position) as image:
            return self.image_transform(image)

    def check(self, index: int) -> tuple[int, bool]:
        """``(length, has_image)`` of a record, without reading its image bytes; ``SampleError`` if it is bad."""
        conversation, tokens = self.encode(index)
        for relative in conversation.images:
            if not self.source.image_exists(relative):
                raise SampleError(self.source.name, conversation.sample_id, self.source.missing_image(relative),
                                  "missing_image")
        return len(tokens.input_ids), bool(conversation.images)

    def scan(self, indices: Sequence[int] | None = None) -> ScanResult:
        """Checks and measures the records at ``indices`` (all by default), whatever ``on_bad_sample`` says."""
        indices = indices if indices is not None else range(len(self))
        lengths = np.zeros(len(indices), dtype=np.int32)
        has_image = np.zeros(len(indices), dtype=bool)
        bad = []
        for position, index in enumerate(indices):
            try:
                lengths[position], has_image[position] = self.check(index)
            except SampleError as error:
                bad.append((index, error.source, error.sample_id, error.problem, error.reason))
        return ScanResult(lengths, has_image, bad)
