"""ScienceQA's ``problems.json`` and ``pid_splits.json`` as LLaVA conversations, so the same files finetune
(``data=scienceqa``) and evaluate (``task=scienceqa_img``).

The question text follows LLaVA's ``llava_test_CQM-A.json``: ``Context: <hint>`` when the problem has a hint,
the question, then one ``A. <choice>`` line per choice. The answer is the letter, or with ``explain`` the
lecture and solution before it, in the layout of LLaVA 1.0's ScienceQA recipe (its ``QCM-LEPA`` output):
``LECTURE: …\\nSOLUTION: …\\n###\\nANSWER: B.``
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava_pl.constants import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

OPTION_LETTERS = ("A", "B", "C", "D", "E")
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IMAGE_LAYOUT = "{split}/{pid}/{image}"  # ScienceQA's images/<split>/<pid>/image.png, under the image folder


class ScienceQAError(ValueError):
    """A problem or split list that cannot be used; the message names the file and the problem id."""


def _read(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ScienceQA file not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def split_problems(
    problems_file: str | os.PathLike, pid_splits_file: str | os.PathLike, split: str
) -> list[tuple[str, dict]]:
    """``(problem id, problem)`` for every id of ``split`` in ``pid_splits.json``, in that file's order."""
    problems, splits = _read(problems_file), _read(pid_splits_file)
    if split not in splits:
        raise ScienceQAError(f"{pid_splits_file}: no split {split!r} (it has {sorted(splits)})")
    missing = [pid for pid in splits[split] if pid not in problems]
    if missing:
        raise ScienceQAError(f"{pid_splits_file}: split {split!r} lists problem(s) {missing[:5]} that "
                             f"{problems_file} does not have")
    return [(pid, problems[pid]) for pid in splits[split]]


def question_text(pid: str, problem: dict, source: str = "problems.json") -> str:
    """Context (the hint), question and lettered choices, one per line, as LLaVA's CQM-A files write them."""
    choices = problem.get("choices") or []
    if not 2 <= len(choices) <= len(OPTION_LETTERS):
        raise ScienceQAError(f"{source}: problem {pid} has {len(choices)} choices; 2 to {len(OPTION_LETTERS)} fit")
    lines = [f"Context: {problem['hint']}"] if problem.get("hint") else []
    lines.append(problem["question"])
    lines += [f"{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, choices)]
    return "\n".join(lines)


def answer_letter(pid: str, problem: dict, source: str = "problems.json") -> str:
    answer = problem.get("answer")
    if not isinstance(answer, int) or not 0 <= answer < len(problem["choices"]):
        raise ScienceQAError(f"{source}: problem {pid} has answer {answer!r}, not an index into its choices")
    return OPTION_LETTERS[answer]


def explained_answer(pid: str, problem: dict, source: str = "problems.json") -> str:
    """LLaVA 1.0's ``LEPA`` target: lecture and solution (each only if present), then the answer letter."""
    text = ""
    if problem.get("lecture", "").strip():
        text += f"LECTURE: {problem['lecture']}\n"
    if problem.get("solution", "").strip():
        text += f"SOLUTION: {problem['solution']}\n"
    return (text + f"###\nANSWER: {answer_letter(pid, problem, source)}.").replace("  ", " ").strip()


def image_path(pid: str, problem: dict, split: str, layout: str = IMAGE_LAYOUT) -> str | None:
    """The problem's image relative to the image folder, or ``None`` for a text-only problem."""
    if not problem.get("image"):
        return None
    return layout.format(split=split, pid=pid, image=problem["image"])


def to_conversation(
    pid: str,
    problem: dict,
    split: str,
    instruction: str | None = LETTER_INSTRUCTION,
    explain: bool = False,
    image_layout: str = IMAGE_LAYOUT,
    source: str = "problems.json",
) -> dict[str, Any]:
    """One LLaVA record: the human turn asks (with ``<image>`` first for image problems), gpt answers."""
    question = question_text(pid, problem, source)
    if instruction:
        question = f"{question}\n{instruction}"
    image = image_path(pid, problem, split, image_layout)
    record: dict[str, Any] = {"id": pid}
    if image is not None:
        record["image"] = image
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    answer = explained_answer(pid, problem, source) if explain else answer_letter(pid, problem, source)
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


def convert_scienceqa(
    problems: str | os.PathLike,
    pid_splits: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    instruction: str | None = LETTER_INSTRUCTION,
    explain: bool = False,
    image_layout: str = IMAGE_LAYOUT,
) -> dict[str, Path]:
    """Writes ``<out_dir>/scienceqa_<split>.json`` (LLaVA JSON) for each split; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in splits:
        records = [to_conversation(pid, problem, split, instruction, explain, image_layout, str(problems))
                   for pid, problem in split_problems(problems, pid_splits, split)]
        path = out / f"scienceqa_{split}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
        log.info(f"ScienceQA {split}: {len(records)} conversations → {path}")
        written[split] = path
    return written
