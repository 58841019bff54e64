"""TextVQA (val): the VQA soft accuracy over ten human answers, both sides normalised by EvalAI's rules.

Read as LLaVA reads it: LLaVA's question file sets ``question_id`` to the TextVQA image id (several questions
share one) and writes the question, a "Reference OCR token:" line and the answer instruction on separate
lines; an answer is matched to TextVQA's annotation by (image id, lower-cased question), the question being
the prompt's line that is neither the OCR line nor the instruction.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

from llava_pl.eval.task import (
    Metrics,
    Sample,
    Task,
    TaskDataError,
    occurrence_key,
    ratio,
    read_json,
    read_json_records,
)
from llava_pl.eval.vqa_normalize import normalize_answer, soft_accuracy

OCR_PREFIX = "Reference OCR token:"
SHORT_ANSWER = "Answer the question using a single word or phrase."


def question_of(prompt: str) -> str:
    """The lower-cased question of a LLaVA TextVQA prompt."""
    lines = [line for line in prompt.split("\n") if not line.startswith(OCR_PREFIX) and line.strip() != SHORT_ANSWER]
    return lines[0].lower() if lines else ""


class TextVQATask(Task):
    """Args:
        questions: LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``.
        annotations: TextVQA's ``TextVQA_0.5.1_val.json`` (``data``: image_id, question, answers).
        image_folder: TextVQA's ``train_images`` (val images live there).
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        annotations: str | os.PathLike,
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.annotations = annotations

    def key_of(self, question_id: object, prompt: str | None) -> str:
        return f"{question_id}|{question_of(prompt or '')}"

    def samples(self) -> list[Sample]:
        annotated = {(str(entry["image_id"]), entry["question"].lower()): entry["answers"]
                     for entry in read_json(self.annotations)["data"]}
        occurrences: dict[str, int] = defaultdict(int)
        samples = []
        for number, question in enumerate(read_json_records(self.questions), start=1):
            answers = annotated.get((str(question["question_id"]), question_of(question["text"])))
            if answers is None:
                raise TaskDataError(f"{self.questions} line {number}: image {question['question_id']}, question "
                                    f"{question_of(question['text'])!r} has no annotation in {self.annotations}")
            base = self.key_of(question["question_id"], question["text"])
            occurrences[base] += 1
            samples.append(Sample(key=occurrence_key(base, occurrences[base]), question_id=question["question_id"],
                                  prompt=question["text"], image=question["image"], target=list(answers)))
        return samples

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        total = 0.0
        for sample in samples:
            if sample.key in answers:
                humans = [normalize_answer(answer) for answer in sample.target]
                total += soft_accuracy(normalize_answer(answers[sample.key]), humans)
        return {"accuracy": ratio(total, len(samples)), "n": len(samples)}
