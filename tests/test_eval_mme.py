"""MME: LLaVA's questions matched to MME's per-subtask ground truth, answers parsed as MME's calculation.py
parses them, and the paired-question acc+ (both questions about an image right)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_pl.eval.predictions import answers_by_key, read_answer_file
from llava_pl.eval.runner import score_file
from llava_pl.eval.task import TaskDataError
from llava_pl.eval.tasks.mme import MMETask, parse_yes_no, question_stem
from tests.conftest import formats_file

PATTERN = "MME_eval_tool.Your_Results.{task}.sample.txt"


def _task(half: str = "") -> MMETask:
    questions = formats_file(f"{half}llava_mme.sample.jsonl")
    return MMETask(questions, questions.parent, PATTERN)


@pytest.mark.parametrize(("answer", "parsed"), [
    ("Yes", "yes"), ("No", "no"), ("yes", "yes"),
    ("no, there is no red scarf in the image.", "no"),  # "no" in the first four characters
    ("Not sure", "no"),  # "not " holds "no"
    ("The answer is yes", "other"),  # neither in "the "
    ("I think so", "other"),
    ("eyes", "yes"),  # "yes" inside the first four characters
    ("noyes", "no"),  # "noye": no "yes" in it, "no" is
])
def test_answer_parsing(answer, parsed) -> None:
    assert parse_yes_no(answer) == parsed


def test_question_matching_handles_both_instructions_and_double_spaces() -> None:
    assert question_stem("Is there a red bus in the image?\nAnswer the question using a single word or phrase.") \
        == question_stem("Is there a red bus in the image?  Please answer yes or no.") \
        == "Is there a red bus in the image?"
    samples = _task().samples()
    assert len(samples) == 46
    # the ground truth of 405205 writes both questions with two spaces before "Please answer yes or no."
    bus = [s for s in samples if s.question_id == "color/000000405205.jpg"]
    assert [s.target for s in bus] == ["yes", "no"]


def test_llava_13b_answers_first_half() -> None:
    """Per subtask (image: LLaVA-1.5-13B's answers vs. ground truth, ✓/✗):
    existence       4 images, all 8 right                                      acc 100,  acc+ 100   → 200
    OCR             0003 Yes/Yes ✓ Yes/No ✗; 0002 ✓✓; 0001 No/Yes ✗ No/No ✓; 0004 ✓✓
                    6 of 8 right, 2 of 4 images both right                     acc 75,   acc+ 50    → 125
    celebrity       4 images, all 8 right                                      acc 100,  acc+ 100   → 200
    color           7 images; 405205 (white Yes ✓, red Yes/No ✗) and 12120 (blue ✓, purple Yes/No ✗)
                    miss one each: 12 of 14, 5 of 7                            acc 600/7, acc+ 500/7 → 1100/7
    code_reasoning  always "Yes": 4 of 8, no image both right                 acc 50,   acc+ 0     → 50
    perception = existence + OCR + celebrity + color; cognition = code_reasoning
    """
    metrics = score_file(_task(), formats_file("llava_mme.answers.llava-v1.5-13b.sample.jsonl"))
    expected = {"existence": (100, 100), "OCR": (75, 50), "celebrity": (100, 100),
                "color": (100 * 12 / 14, 100 * 5 / 7), "code_reasoning": (50, 0)}
    for subtask, (acc, acc_plus) in expected.items():
        assert metrics[f"{subtask}/acc"] == pytest.approx(acc)
        assert metrics[f"{subtask}/acc_plus"] == pytest.approx(acc_plus)
        assert metrics[f"{subtask}/score"] == pytest.approx(acc + acc_plus)
    assert metrics["perception"] == pytest.approx(200 + 125 + 200 + 1100 / 7)
    assert metrics["cognition"] == pytest.approx(50)


def test_llava_13b_answers_second_half() -> None:
    """count (5 images) all right → 200; position: 14038 ✓✓, the other four answer the false question "Yes"
    → 6/10, 1/5 → 80; artwork: 10049's "sculpture" answered Yes → 7/8, 3/4 → 162.5;
    numerical_calculation (cognition): 0003 ✓✗, 0002 ✗✓, 0001 ✗✗, 0004 ✓✗ → 3/8, 0/4 → 37.5."""
    metrics = score_file(_task("more/"), formats_file("more/llava_mme.answers.llava-v1.5-13b.sample.jsonl"))
    assert metrics["count/score"] == pytest.approx(200)
    assert metrics["position/acc"] == pytest.approx(60) and metrics["position/acc_plus"] == pytest.approx(20)
    assert metrics["artwork/score"] == pytest.approx(87.5 + 75)
    assert metrics["numerical_calculation/score"] == pytest.approx(37.5)
    assert metrics["perception"] == pytest.approx(200 + 80 + 162.5)
    assert metrics["cognition"] == pytest.approx(37.5)


def _mme_results_as_answers(subtasks: list[str], tmp_path: Path) -> Path:
    """MME's example results (LaVIN's free-text responses, in MME's 4-column format) as answer lines: the
    question text is MME's own ("… Please answer yes or no."), the id the image path of LLaVA's file."""
    ids = {}
    for line in formats_file("llava_mme.sample.jsonl").read_text().splitlines():
        question = json.loads(line)
        ids[(question["category"], question["question_id"].split("/")[-1])] = question["question_id"]
    rows = []
    for subtask in subtasks:
        for line in formats_file(f"MME_eval_tool.LaVIN.{subtask}.sample.txt").read_text().splitlines():
            image, question, _, response = line.split("\t")
            rows.append({"question_id": ids[(subtask, image)], "prompt": question, "text": response})
    path = tmp_path / "lavin.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_free_text_answers_of_mmes_example_results(tmp_path) -> None:
    """LaVIN's responses start "yes, …" or "no, …":
    color  6723 yes ✓ yes ✗; 8277 no ✗ no ✓; 12120 yes ✓ yes ✗; 14831 no ✗ no ✓; 55072 yes ✓ no ✓;
           405205 no ✗ no ✓; 563758 no ✗ no ✓                       → 8/14, 1/7 images
    OCR    0001 yes ✓ no ✓; 0002 yes ✓ yes ✗; 0003 yes ✓ yes ✗; 0004 no ✗ no ✓ → 5/8, 1/4
    """
    task = _task()
    subtasks = ["color", "OCR"]
    samples = [sample for sample in task.samples() if sample.meta["subtask"] in subtasks]
    path = _mme_results_as_answers(subtasks, tmp_path)
    answers = answers_by_key(task, samples, read_answer_file(path), str(path))
    assert len(answers) == 22  # every response found its question, double-spaced ones included
    metrics = task.score(samples, answers)
    assert metrics["color/acc"] == pytest.approx(100 * 8 / 14)
    assert metrics["color/acc_plus"] == pytest.approx(100 / 7)
    assert metrics["OCR/acc"] == pytest.approx(62.5) and metrics["OCR/acc_plus"] == pytest.approx(25)


def test_capped_runs_keep_both_questions_of_an_image() -> None:
    task = _task()
    chosen = task.subset(task.samples(), 6)
    images = [sample.meta["image"] for sample in chosen]
    assert len(chosen) == 6 and all(images.count(image) == 2 for image in images)
    assert len({sample.meta["subtask"] for sample in chosen}) == 3  # spread over the file, not its start


def test_question_without_ground_truth_is_named(tmp_path) -> None:
    questions = tmp_path / "llava_mme.jsonl"
    questions.write_text(json.dumps({"question_id": "color/000000405205.jpg", "image": "color/000000405205.jpg",
                                     "text": "Is there a green bus in the image?", "category": "color"}) + "\n")
    with pytest.raises(TaskDataError, match=r"line 1: color/000000405205.jpg 'Is there a green bus in the image\?'"):
        MMETask(questions, formats_file("llava_mme.sample.jsonl").parent, PATTERN).samples()
