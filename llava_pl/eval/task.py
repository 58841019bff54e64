"""What every benchmark task provides to the runner: its samples, how answers map to them, and its score."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template

Metrics = dict[str, float]


class TaskDataError(ValueError):
    """A task file is malformed or does not line up with another: the message names the file and record."""


@dataclass(frozen=True)
class Sample:
    """One question of a task.

    Args:
        key: unique within the task; predictions are stored and resumed by it.
        question_id: the id as the task's question file has it (LLaVA's answer files repeat it).
        prompt: the text sent after the image, LLaVA-1.5's answer instruction included.
        image: the image path relative to the task's image folder; ``None`` for a text-only question.
        target: what the task's scorer compares an answer against.
        meta: grouping fields the scorer reads (split, category, question type, …).
    """

    key: str
    question_id: Any
    prompt: str
    image: str | None
    target: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A benchmark: reads its files lazily (constructing a task touches no file), scores answers by its rules.

    Args:
        image_folder: the folder the samples' image paths are relative to.
        max_new_tokens: the generation budget per answer.
        template: the conversation template the questions are asked in; None: the model's own.
    """

    def __init__(
        self,
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
        template: Template | None = None,
    ) -> None:
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.max_new_tokens = max_new_tokens
        self.template = template

    @abstractmethod
    def samples(self) -> list[Sample]:
        """Every question of the task, in the order of its question file."""

    @abstractmethod
    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        """Metrics over ``samples``; ``answers`` maps sample keys to the model's raw text. A sample without
        an answer counts as wrong, as the official scripts count an unanswered question."""

    def subset(self, samples: Sequence[Sample], limit: int | None) -> list[Sample]:
        """``limit`` samples spread evenly over the task (all of them without a limit), so a capped run still
        sees every split and category of a file that lists them one after another."""
        return evenly_spaced(samples, limit)

    def key_of(self, question_id: Any, prompt: str | None) -> str:
        """The sample key an answer line refers to. LLaVA's answer files carry ``question_id`` and the
        ``prompt`` that was sent; tasks whose question ids repeat also read the prompt."""
        return str(question_id)

    def image(self, sample: Sample, transform: ImageTransform) -> torch.Tensor | None:
        """The pixel tensor for a sample (``None`` when it has no image)."""
        if sample.image is None:
            return None
        if self.image_folder is None:
            raise TaskDataError(f"{type(self).__name__}: sample {sample.key} has an image but no image_folder is set")
        path = self.image_folder / sample.image
        try:
            with Image.open(path) as image:
                return transform(image)
        except FileNotFoundError as error:
            raise TaskDataError(f"{type(self).__name__}: image {path} of sample {sample.key} not found") from error
        except (UnidentifiedImageError, OSError) as error:
            raise TaskDataError(f"{type(self).__name__}: image {path} of sample {sample.key}: {error}") from error

    def write_outputs(self, samples: Sequence[Sample], answers: Mapping[str, str], out_dir: Path) -> list[Path]:
        """Extra files a task writes beside its metrics (e.g. a server upload); none by default."""
        return []

    def summary(self, metrics: Metrics) -> str:
        """The metrics as printed at the end of an evaluation: one ``name value`` line each by default."""
        return "\n".join(f"  {key:<32} {value:.4f}" if isinstance(value, float) else f"  {key:<32} {value}"
                         for key, value in metrics.items())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise TaskDataError(f"{path}: not JSON: {error}") from error


def read_json_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON array or a JSON Lines file, whatever its suffix (POPE's ``.json`` label files are
    JSON Lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return read_json(path)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise TaskDataError(f"{path}: line {number} is not JSON: {error}") from error
    return records


def evenly_spaced(items: Sequence[Any], limit: int | None) -> list[Any]:
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    return [items[index * len(items) // limit] for index in range(limit)]


def unique_keys(samples: Sequence[Sample], source: str) -> list[Sample]:
    """Checks that keys are unique, naming the file and the repeated key."""
    seen: set[str] = set()
    for sample in samples:
        if sample.key in seen:
            raise TaskDataError(f"{source}: question {sample.key!r} appears twice")
        seen.add(sample.key)
    return list(samples)


def occurrence_key(base: str, occurrence: int) -> str:
    """The key of the ``occurrence``-th (1-based) question with the same base key: where a question file
    repeats an (id, question) pair, answers are matched to the repeats in file order."""
    return base if occurrence == 1 else f"{base}#{occurrence}"


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0
