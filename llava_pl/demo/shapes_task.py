"""The demo's held-out shapes questions: exact match per question type, with a blind control.

Each question is asked twice, with its image and with a blank one (the mean colour everywhere, key
``<id>/blank``), so a score can be read against what the model answers without looking. ``chance`` is what
always giving the most frequent answer of the type scores. Where the questions file gives each image's number of
``shapes``, ``several_accuracy`` is the accuracy on images of two or more: there "what color is the circle?" has to
find the circle among other shapes.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava_pl.demo.blank_control import BLANK_SUFFIX, BlankControlTask, blank_twin
from llava_pl.demo.table import format_table, per_type
from llava_pl.eval.task import Metrics, Sample, ratio, read_json_records, unique_keys

ANSWERS_FILE = "answers.jsonl"


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def chance_level(answers: Sequence[str]) -> float:
    """What a blind guesser scores by always giving the most frequent answer of the question type."""
    return Counter(answers).most_common(1)[0][1] / len(answers)


class ShapesTask(BlankControlTask):
    """Args:
        questions: the demo's ``questions_test.jsonl`` (``question_id``, ``image``, ``text``, ``answer``, ``type``).
        image_folder: the folder the image paths are relative to.
        blank_control: also ask every question about a blank image.
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        image_folder: str | os.PathLike,
        blank_control: bool = True,
        max_new_tokens: int = 8,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.blank_control = blank_control

    def samples(self) -> list[Sample]:
        samples = []
        for record in read_json_records(self.questions):
            meta = {"type": record["type"], "question": str(record["question_id"]), "shapes": record.get("shapes")}
            asked = Sample(key=str(record["question_id"]), question_id=record["question_id"], prompt=record["text"],
                           image=record["image"], target=normalize_answer(record["answer"]), meta=meta)
            samples += [asked, blank_twin(asked)] if self.blank_control else [asked]
        return unique_keys(samples, str(self.questions))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        by_type: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: {"asked": [], "blank": []})
        for sample in samples:
            by_type[sample.meta["type"]]["blank" if sample.meta.get("blank") else "asked"].append(sample)

        def accuracy(members: list[Sample]) -> float:
            return ratio(sum(s.key in answers and normalize_answer(answers[s.key]) == s.target for s in members),
                         len(members))

        metrics: Metrics = {}
        for kind, groups in sorted(by_type.items()):
            metrics[f"{kind}/accuracy"] = accuracy(groups["asked"])
            if groups["blank"]:
                metrics[f"{kind}/blank_accuracy"] = accuracy(groups["blank"])
            metrics[f"{kind}/chance"] = chance_level([s.target for s in groups["asked"]])
            metrics[f"{kind}/n"] = len(groups["asked"])
            several = [s for s in groups["asked"] if (s.meta.get("shapes") or 0) >= 2]
            if several:
                metrics[f"{kind}/several_accuracy"] = accuracy(several)
                metrics[f"{kind}/several_n"] = len(several)
        return metrics

    def write_outputs(self, samples: Sequence[Sample], answers: Mapping[str, str], out_dir: Path) -> list[Path]:
        """``answers.jsonl``: each question's record with its ``prediction`` and ``blank_prediction`` (what
        ``report=shapes`` draws)."""
        asked = {sample.meta["question"] for sample in samples}
        path = out_dir / ANSWERS_FILE
        with path.open("w") as file:
            for record in read_json_records(self.questions):
                key = str(record["question_id"])
                if key in asked:
                    row = {**record, "prediction": answers.get(key, ""),
                           "blank_prediction": answers.get(key + BLANK_SUFFIX, "")}
                    file.write(json.dumps(row) + "\n")
        return [path]

    def summary(self, metrics: Metrics) -> str:
        return format_table(per_type(metrics))
