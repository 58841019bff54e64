"""The demo's held-out shapes questions: exact match per question type, with a blind control.

Each question is asked twice, with its image and with a blank one (the mean colour everywhere, key
``<id>/blank``), so a score can be read against what the model answers without looking. ``chance`` is what
always giving the most frequent answer of the type scores. Where the questions file gives each image's number of
``shapes``, ``several_accuracy`` is the accuracy on images of two or more: there "what color is the circle?" has to
find the circle among other shapes.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import torch

from llava_pl.data.images import ImageTransform
from llava_pl.eval.task import Metrics, Sample, Task, ratio, read_json_records, unique_keys

BLANK_SUFFIX = "/blank"


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def chance_level(answers: Sequence[str]) -> float:
    """What a blind guesser scores by always giving the most frequent answer of the question type."""
    return Counter(answers).most_common(1)[0][1] / len(answers)


class ShapesTask(Task):
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
            samples.append(asked)
            if self.blank_control:
                samples.append(Sample(key=asked.key + BLANK_SUFFIX, question_id=record["question_id"],
                                      prompt=record["text"], image=record["image"], target=asked.target,
                                      meta={**meta, "blank": True}))
        return unique_keys(samples, str(self.questions))

    def subset(self, samples: Sequence[Sample], limit: int | None) -> list[Sample]:
        """The first ``limit`` questions (each with its blank twin)."""
        if limit is None:
            return list(samples)
        keep = set(list(dict.fromkeys(sample.meta["question"] for sample in samples))[:limit])
        return [sample for sample in samples if sample.meta["question"] in keep]

    def image(self, sample: Sample, transform: ImageTransform) -> torch.Tensor | None:
        return transform.blank() if sample.meta.get("blank") else super().image(sample, transform)

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
