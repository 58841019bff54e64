"""The demo's held-out evaluation: exact-match accuracy per question type, with and without the image."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import PreTrainedTokenizerBase

from llava_pl.data.dataset import read_records
from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.generate import Answerer
from llava_pl.model.llava import LlavaModel


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def chance_level(answers: list[str]) -> float:
    """What a blind guesser scores by always giving the most frequent answer of the question type."""
    return Counter(answers).most_common(1)[0][1] / len(answers)


def score(records: list[dict[str, Any]], predictions: list[str], blank_predictions: list[str]) -> dict[str, dict]:
    """Per question type: accuracy, accuracy with the image blanked, chance level and count."""
    by_type: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_type[record["type"]].append(index)
    results = {}
    for kind, indices in sorted(by_type.items()):
        truth = [normalize_answer(records[i]["answer"]) for i in indices]

        def accuracy(answers: list[str]) -> float:
            return sum(normalize_answer(answers[i]) == t for i, t in zip(indices, truth)) / len(indices)

        results[kind] = {
            "accuracy": accuracy(predictions),
            "blank_accuracy": accuracy(blank_predictions),
            "chance": chance_level(truth),
            "n": len(indices),
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'question type':<14} {'accuracy':>9} {'blank image':>12} {'chance':>8} {'n':>6}"]
    for kind, row in results.items():
        lines.append(
            f"{kind:<14} {row['accuracy']:>9.1%} {row['blank_accuracy']:>12.1%} {row['chance']:>8.1%} {row['n']:>6}"
        )
    return "\n".join(lines)


class ShapesEvaluation:
    """Answers the held-out shapes questions twice — with each image and with a blank one — and scores both.

    Args:
        questions: JSON Lines with ``question_id``, ``image``, ``text``, ``answer`` and ``type``.
        image_folder: the folder the ``image`` paths are relative to.
        limit: evaluate only the first ``limit`` questions.
    """

    def __init__(
        self,
        questions: str,
        image_folder: str,
        batch_size: int = 64,
        max_new_tokens: int = 8,
        limit: int | None = None,
        output_name: str = "shapes_eval.json",
    ) -> None:
        self.questions = questions
        self.image_folder = Path(image_folder)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.limit = limit
        self.output_name = output_name

    def __call__(
        self,
        model: LlavaModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        run_dir: str | Path,
    ) -> dict[str, dict]:
        records = read_records(self.questions)[: self.limit]
        answer = Answerer(model, tokenizer, template, self.max_new_tokens, self.batch_size)
        questions = [record["text"] for record in records]
        images = [self._load(record["image"], image_transform) for record in records]
        blank = image_transform.blank()
        predictions = answer(questions, images)
        blank_predictions = answer(questions, [blank] * len(records))
        results = score(records, predictions, blank_predictions)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / self.output_name).write_text(json.dumps(results, indent=2) + "\n")
        with (run_dir / "shapes_predictions.jsonl").open("w") as file:
            for record, prediction, blank_prediction in zip(records, predictions, blank_predictions):
                row = {**record, "prediction": prediction, "blank_prediction": blank_prediction}
                file.write(json.dumps(row) + "\n")
        return results

    def _load(self, relative: str, image_transform: ImageTransform):
        with Image.open(self.image_folder / relative) as image:
            return image_transform(image)
