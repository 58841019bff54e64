"""GQA (testdev-balanced): exact match against the one gold answer.

As LLaVA scores it: its ``convert_gqa_for_eval.py`` strips trailing periods and lower-cases the answer, and
GQA's ``eval.py`` counts a prediction right when it equals the gold answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from llava_pl.eval.task import Metrics, Sample, Task, TaskDataError, ratio, read_json, read_json_records, unique_keys


def gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


class GQATask(Task):
    """Args:
        questions: LLaVA's ``llava_gqa_testdev_balanced.jsonl``.
        answers: GQA's ``testdev_balanced_questions.json`` (question id → record with ``answer``).
        image_folder: GQA's ``images`` folder.
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        answers: str | os.PathLike,
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.answers = answers

    def samples(self) -> list[Sample]:
        gold = read_json(self.answers)
        samples = []
        for number, question in enumerate(read_json_records(self.questions), start=1):
            record = gold.get(str(question["question_id"]))
            if record is None or "answer" not in record:
                raise TaskDataError(f"{self.questions} line {number}: question {question['question_id']} has no "
                                    f"answer in {self.answers}")
            samples.append(Sample(key=str(question["question_id"]), question_id=question["question_id"],
                                  prompt=question["text"], image=question["image"], target=record["answer"]))
        return unique_keys(samples, str(self.questions))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        correct = sum(s.key in answers and gqa_prediction(answers[s.key]) == s.target for s in samples)
        return {"accuracy": ratio(correct, len(samples)), "n": len(samples)}
