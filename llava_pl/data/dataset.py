"""A map-style data set over a LLaVA JSON (or JSON Lines) file and its image folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from llava_pl.data.conversation import Conversation, SampleError, parse_record
from llava_pl.data.images import ImageTransform, input_size
from llava_pl.data.templates import Template
from llava_pl.data.tokenization import tokenize_segments


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSON array or a JSON Lines file of records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    records = json.loads(text)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON array of LLaVA records")
    return records


class LlavaDataset(Dataset):
    """Yields ``{"id", "input_ids", "labels", "pixel_values"}`` per record; errors name the file and sample."""

    def __init__(
        self,
        path: str | os.PathLike,
        image_folder: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        tokens_per_image: int,
        max_length: int | None = None,
    ) -> None:
        self.path = str(path)
        self.records = read_records(path)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def conversation(self, index: int) -> Conversation:
        return parse_record(self.records[index], self.path, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        conversation = self.conversation(index)
        try:
            segments = self.template.segments(conversation.messages, self.tokenizer)
        except ValueError as error:
            raise SampleError(self.path, conversation.sample_id, str(error)) from error
        tokens = tokenize_segments(segments, self.tokenizer, self.tokens_per_image, self.max_length)
        kept = conversation.images[: tokens.num_images]
        return {
            "id": conversation.sample_id,
            "input_ids": torch.tensor(tokens.input_ids, dtype=torch.long),
            "labels": torch.tensor(tokens.labels, dtype=torch.long),
            "pixel_values": self.load_images(conversation.sample_id, kept),
        }

    def load_images(self, sample_id: str, relative_paths: tuple[str, ...] | list[str]) -> torch.Tensor:
        """``(num_images, C, H, W)``; an empty first dimension for a text-only sample."""
        if not relative_paths:
            height, width = input_size(self.image_transform.processor)
            return torch.zeros(0, 3, height, width)
        return torch.stack([self._load_image(sample_id, relative) for relative in relative_paths])

    def _load_image(self, sample_id: str, relative: str) -> torch.Tensor:
        path = self.image_folder / relative
        try:
            with Image.open(path) as image:
                return self.image_transform(image)
        except FileNotFoundError as error:
            raise SampleError(self.path, sample_id, f"image file not found: {path}") from error
        except (UnidentifiedImageError, OSError) as error:
            raise SampleError(self.path, sample_id, f"image file unreadable: {path} ({error})") from error
