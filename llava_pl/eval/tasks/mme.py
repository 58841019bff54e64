"""MME: two yes/no questions per image (one true, one false) over 14 subtasks.

Read as LLaVA reads it: LLaVA's ``llava_mme.jsonl`` asks the questions (``question_id`` is the image path,
shared by the image's two questions; ``category`` the subtask), and MME's per-subtask ground-truth files
(``eval_tool/Your_Results/<subtask>.txt``: image, question, Yes/No, tab-separated) answer them. A question
is matched on its subtask, image file name and wording without the answer instruction (MME's files write
"Please answer yes or no." after one or two spaces; LLaVA's "Answer the question using a single word or
phrase." on a new line).

Scoring follows MME's ``calculation.py``: an answer is yes/no if it is exactly that (lower-cased), else by
which of "yes"/"no" occurs in its first four characters (yes first), else neither (wrong). Per subtask,
``acc`` is the share of questions right and ``acc_plus`` the share of images with both questions right,
both × 100, and the subtask's ``score`` is their sum; ``perception`` and ``cognition`` add up the scores of
their subtasks (of those present).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava_pl.eval.task import (
    Metrics,
    Sample,
    Task,
    TaskDataError,
    evenly_spaced,
    occurrence_key,
    ratio,
    read_json_records,
)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
INSTRUCTIONS = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


def question_stem(text: str) -> str:
    """The question without an answer instruction or the whitespace around it."""
    for instruction in INSTRUCTIONS:
        text = text.replace(instruction, "")
    return text.strip()


def parse_yes_no(answer: str) -> str:
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    if "no" in answer[:4]:
        return "no"
    return "other"


def read_ground_truth(path: Path) -> dict[tuple[str, str], str]:
    """``(image file name, question stem) → "yes" | "no"`` from one subtask's tab-separated file (a results
    file with a fourth column, the model's answer, reads the same)."""
    truth = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3 or fields[2].strip().lower() not in ("yes", "no"):
            raise TaskDataError(f"{path} line {number}: expected image<TAB>question<TAB>Yes|No, got {line!r:.200}")
        truth[(fields[0], question_stem(fields[1]))] = fields[2].strip().lower()
    return truth


class MMETask(Task):
    """Args:
        questions: LLaVA's ``llava_mme.jsonl``.
        ground_truth: the folder of MME's per-subtask files (``eval_tool/Your_Results``).
        file_pattern: the file name of a subtask's ground truth in that folder.
        image_folder: ``MME_Benchmark_release_version`` (question ids are image paths below it).
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        ground_truth: str | os.PathLike,
        file_pattern: str = "{task}.txt",
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.ground_truth = Path(ground_truth)
        self.file_pattern = file_pattern

    def key_of(self, question_id: object, prompt: str | None) -> str:
        return f"{question_id}|{question_stem(prompt or '')}"

    def samples(self) -> list[Sample]:
        truths: dict[str, dict[tuple[str, str], str]] = {}
        occurrences: dict[str, int] = defaultdict(int)
        samples = []
        for number, question in enumerate(read_json_records(self.questions), start=1):
            subtask = question["category"]
            if subtask not in truths:
                path = self.ground_truth / self.file_pattern.format(task=subtask)
                if not path.is_file():
                    raise TaskDataError(f"{self.questions} line {number}: no ground truth for subtask {subtask!r} "
                                        f"at {path}")
                truths[subtask] = read_ground_truth(path)
            image_name = str(question["question_id"]).split("/")[-1]
            stem = question_stem(question["text"])
            truth = truths[subtask].get((image_name, stem))
            if truth is None:
                raise TaskDataError(f"{self.questions} line {number}: {subtask}/{image_name} {stem!r} is not in "
                                    f"{self.ground_truth / self.file_pattern.format(task=subtask)}")
            base = self.key_of(question["question_id"], question["text"])
            occurrences[base] += 1
            samples.append(Sample(key=occurrence_key(base, occurrences[base]), question_id=question["question_id"],
                                  prompt=question["text"], image=question.get("image", question["question_id"]),
                                  target=truth, meta={"subtask": subtask, "image": f"{subtask}/{image_name}"}))
        return samples

    def subset(self, samples: Sequence[Sample], limit: int | None) -> list[Sample]:
        """Whole images (both of their questions), spread evenly, so ``acc_plus`` stays meaningful."""
        by_image: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_image[sample.meta["image"]].append(sample)
        groups = list(by_image.values())
        if limit is not None:
            groups = evenly_spaced(groups, max(1, limit // 2))
        return [sample for group in groups for sample in group]

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for sample in samples:
            answer = parse_yes_no(answers[sample.key]) if sample.key in answers else "other"
            right[sample.meta["subtask"]][sample.meta["image"]].append(answer == sample.target)
        metrics: Metrics = {}
        for subtask, images in sorted(right.items()):
            marks = [mark for image in images.values() for mark in image]
            acc = 100 * ratio(sum(marks), len(marks))
            acc_plus = 100 * ratio(sum(all(image) for image in images.values()), len(images))
            metrics |= {f"{subtask}/acc": acc, f"{subtask}/acc_plus": acc_plus, f"{subtask}/score": acc + acc_plus}
        metrics["perception"] = sum(metrics.get(f"{name}/score", 0.0) for name in PERCEPTION)
        metrics["cognition"] = sum(metrics.get(f"{name}/score", 0.0) for name in COGNITION)
        return metrics
