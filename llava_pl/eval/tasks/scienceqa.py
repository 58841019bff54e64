"""ScienceQA (LLaVA-1.5's "ScienceQA-IMG"): multiple choice, answered with the option's letter.

Scoring follows LLaVA's ``eval_science_qa.py``: an answer that is exactly a letter, or starts with a letter
followed by ``". "`` (``"A. hyperbole"``), gives that letter; otherwise the letter of a single match of
``answer_pattern`` (default ``The answer is ([A-Z]).``); anything else is unparsed. A letter past the
problem's last choice counts as wrong. ``img_accuracy`` (questions with an image) is the number LLaVA-1.5's
table reports; ``accuracy`` is over every question of the split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from llava_pl.data.scienceqa import (
    IMAGE_LAYOUT,
    LETTER_INSTRUCTION,
    OPTION_LETTERS,
    image_path,
    question_text,
    split_problems,
)
from llava_pl.eval.task import Metrics, Sample, Task, ratio, unique_keys


def parse_letter(text: str, pattern: re.Pattern[str]) -> str | None:
    """The option letter an answer gives, or ``None`` where LLaVA's rules find none."""
    if text in OPTION_LETTERS:
        return text
    if len(text) >= 3 and text[0] in OPTION_LETTERS and text[1:3] == ". ":
        return text[0]
    found = pattern.findall(text)
    return found[0] if len(found) == 1 else None


def choice_index(letter: str | None, num_choices: int) -> int:
    """0-based choice index of a letter, -1 when there is none or it is past the last choice."""
    if letter is None or letter not in OPTION_LETTERS[:num_choices]:
        return -1
    return OPTION_LETTERS.index(letter)


class ScienceQATask(Task):
    """Args:
        problems: ScienceQA's ``problems.json``.
        pid_splits: ScienceQA's ``pid_splits.json``.
        split: which split of ``pid_splits`` to ask (``test`` for the paper's numbers).
        image_folder: ScienceQA's ``images`` folder (``<split>/<pid>/image.png`` below it).
        instruction: appended on its own line after the choices (LLaVA-1.5's single-letter prompt).
        answer_pattern: the regular expression with one group that finds a letter in free text; a model
            trained with ``explain`` answers ``ANSWER: B.`` and is scored with ``'ANSWER: ([A-Z]).'``.
    """

    def __init__(
        self,
        problems: str | os.PathLike,
        pid_splits: str | os.PathLike,
        split: str = "test",
        image_folder: str | os.PathLike | None = None,
        instruction: str | None = LETTER_INSTRUCTION,
        answer_pattern: str = r"The answer is ([A-Z]).",
        image_layout: str = IMAGE_LAYOUT,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.problems = problems
        self.pid_splits = pid_splits
        self.split = split
        self.instruction = instruction
        self.answer_pattern = re.compile(answer_pattern)
        self.image_layout = image_layout

    def samples(self) -> list[Sample]:
        samples = []
        for pid, problem in split_problems(self.problems, self.pid_splits, self.split):
            prompt = question_text(pid, problem, str(self.problems))
            if self.instruction:
                prompt = f"{prompt}\n{self.instruction}"
            image = image_path(pid, problem, self.split, self.image_layout)
            samples.append(Sample(key=pid, question_id=pid, prompt=prompt, image=image, target=problem["answer"],
                                  meta={"num_choices": len(problem["choices"]), "has_image": image is not None}))
        return unique_keys(samples, str(self.pid_splits))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        correct = correct_img = n_img = unparsed = 0
        for sample in samples:
            letter = parse_letter(answers[sample.key], self.answer_pattern) if sample.key in answers else None
            unparsed += letter is None
            right = choice_index(letter, sample.meta["num_choices"]) == sample.target
            correct += right
            if sample.meta["has_image"]:
                n_img += 1
                correct_img += right
        return {"accuracy": ratio(correct, len(samples)), "img_accuracy": ratio(correct_img, n_img),
                "n": len(samples), "n_img": n_img, "unparsed": unparsed}
