"""ScienceQA: questions built from problems.json as LLaVA builds them, LLaVA-1.5-13B's answers scored by
eval_science_qa.py's rules, and the same files turned into training conversations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llava_pl.data.conversation import parse_record
from llava_pl.data.scienceqa import LETTER_INSTRUCTION, ScienceQAError, convert_scienceqa, to_conversation
from llava_pl.eval.runner import score_file
from llava_pl.eval.tasks.scienceqa import ScienceQATask, choice_index, parse_letter
from tests.conftest import formats_file

HALVES = ["", "more/"]
OFFICIAL = re.compile(r"The answer is ([A-Z]).")


def _task(half: str = "") -> ScienceQATask:
    return ScienceQATask(formats_file(f"{half}problems.sample.json"), formats_file(f"{half}pid_splits.sample.json"))


def _published_answers(half: str, tmp_path: Path) -> Path:
    """LLaVA-1.5-13B's raw answers (the ``outputs`` of LLaVA's result file) in LLaVA's answer-file layout."""
    outputs = json.loads(formats_file(f"{half}scienceqa.llava-v1.5-13b_result.sample.json").read_text())["outputs"]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"question_id": pid, "prompt": "", "text": text}) + "\n"
                            for pid, text in outputs.items()))
    return path


@pytest.mark.parametrize("half", HALVES, ids=["first", "second"])
def test_questions_match_llavas_cqm_a_file(half) -> None:
    """Our prompt from problems.json is LLaVA's llava_test_CQM-A.json question (plus the single-letter
    instruction), for all 25 test problems of each half, and the image paths agree."""
    llava = json.loads(formats_file(f"{half}llava_test_CQM-A.sample.json").read_text())
    samples = {sample.key: sample for sample in _task(half).samples()}
    assert len(llava) == len(samples) == 25
    for record in llava:
        human, gpt = record["conversations"]
        sample = samples[record["id"]]
        assert sample.prompt == human["value"].removeprefix("<image>\n") + "\n" + LETTER_INSTRUCTION
        assert (sample.image is None) == ("image" not in record)
        if sample.image is not None:  # LLaVA's paths are relative to images/test, ours to images/
            assert sample.image == "test/" + record["image"]
        assert "ABCDE"[sample.target] == gpt["value"]


def test_letter_parsing_rules() -> None:
    assert parse_letter("B", OFFICIAL) == "B"
    assert parse_letter("A. hyperbole", OFFICIAL) == "A"  # letter, period, space
    assert parse_letter("A.hyperbole", OFFICIAL) is None  # no space after the period
    assert parse_letter("The answer is C.", OFFICIAL) == "C"
    assert parse_letter("The answer is C. The answer is D.", OFFICIAL) is None  # two matches
    assert parse_letter("The answer is C. Or the answer is D.", OFFICIAL) == "C"  # case-sensitive: one match
    assert parse_letter(" B", OFFICIAL) is None  # not stripped: exact letters only
    assert parse_letter("b", OFFICIAL) is None
    assert choice_index("C", 2) == -1  # past the last of two choices
    assert choice_index("E", 5) == 4 and choice_index(None, 4) == -1


def test_llava_13b_answers_first_half(tmp_path) -> None:
    """Per problem (LLaVA's raw output → parsed letter vs. ground truth):
    right: 4 B=B, 5 B=B*, 26 A=A, 29 D=D, 47 "D. The war…"→D=D, 51 "A. Does a pie…"→A=A, 62 D=D*, 85 A=A*,
           87 A=A*, 92 C=C*, 93 "A. acquired"→A=A, 95 A=A*, 111 D=D*, 121 D=D*               (14, 8 with image*)
    wrong: 11 C≠B*, 15 B≠A, 22 A≠B, 23 A≠B*, 27 "A. hyperbole"→A≠B, 42 E≠B* (E is its 5th choice),
           46 A≠C*, 61 B≠C*, 78 A≠B*, 86 C≠B*, 96 C (only 2 choices: -1)≠B                   (11, 7 with image*)
    """
    metrics = score_file(_task(), _published_answers("", tmp_path))
    assert metrics["n"] == 25 and metrics["n_img"] == 15 and metrics["unparsed"] == 0
    assert metrics["accuracy"] == pytest.approx(14 / 25)
    assert metrics["img_accuracy"] == pytest.approx(8 / 15)


def test_llava_13b_answers_second_half(tmp_path) -> None:
    """The second half: 21 of 25 right, 8 of its 9 image problems; checked against the per-problem
    ``correct``/``incorrect`` lists of LLaVA's own output file below."""
    metrics = score_file(_task("more/"), _published_answers("more/", tmp_path))
    assert metrics["accuracy"] == pytest.approx(21 / 25)
    assert metrics["img_accuracy"] == pytest.approx(8 / 9)


@pytest.mark.parametrize("half", HALVES, ids=["first", "second"])
def test_per_problem_verdicts_equal_llavas_output_file(half, tmp_path) -> None:
    """Each problem scored alone agrees with the list (correct/incorrect) LLaVA's eval_science_qa.py put it in,
    and with the choice index LLaVA's result file records for it."""
    output = json.loads(formats_file(f"{half}scienceqa.llava-v1.5-13b_output.sample.jsonl").read_text())
    indices = json.loads(formats_file(f"{half}scienceqa.llava-v1.5-13b_result.sample.json").read_text())["results"]
    task = _task(half)
    samples = {sample.key: sample for sample in task.samples()}
    for verdict, rows in (("correct", output["correct"]), ("incorrect", output["incorrect"])):
        for row in rows:
            sample = samples[row["question_id"]]
            assert row["is_multimodal"] == (sample.image is not None)
            letter = parse_letter(row["pred"], OFFICIAL)
            assert (letter or "FAILED") == row["parsed_ans"]
            assert choice_index(letter, sample.meta["num_choices"]) == indices[row["question_id"]]
            score = task.score([sample], {sample.key: row["pred"]})["accuracy"]
            assert score == (1.0 if verdict == "correct" else 0.0), row["question_id"]


def test_missing_answer_counts_as_wrong_and_unknown_answer_is_named(tmp_path) -> None:
    task = _task()
    samples = task.samples()
    assert task.score(samples, {})["accuracy"] == 0.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": "99999", "prompt": "", "text": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 1 \(question_id '99999'\) matches no question"):
        score_file(task, bad)


def test_training_conversations_from_the_same_files(tmp_path) -> None:
    problems, splits = formats_file("problems.sample.json"), formats_file("pid_splits.sample.json")
    written = convert_scienceqa(problems, splits, tmp_path, splits=("train", "val"))
    train = json.loads(written["train"].read_text())
    split_ids = json.loads(splits.read_text())
    assert [record["id"] for record in train] == split_ids["train"]
    source = json.loads(problems.read_text())
    for index, record in enumerate(train):
        problem = source[record["id"]]
        human, gpt = record["conversations"]
        assert gpt["value"] == "ABCDE"[problem["answer"]]
        assert human["value"].endswith("\n" + LETTER_INSTRUCTION)
        assert (problem["image"] is not None) == human["value"].startswith("<image>\n")
        if problem["image"]:
            assert record["image"] == f"train/{record['id']}/image.png"
        conversation = parse_record(record, str(written["train"]), index)  # the training parser accepts it
        assert len(conversation.images) == (1 if problem["image"] else 0)


def test_explained_answers_follow_the_lepa_layout() -> None:
    problem = {"question": "Q?", "choices": ["x", "y"], "answer": 1, "hint": "", "image": None,
               "lecture": "Lecture  text.", "solution": "Because y."}
    record = to_conversation("7", problem, "train", instruction=None, explain=True)
    assert record["conversations"][1]["value"] == "LECTURE: Lecture text.\nSOLUTION: Because y.\n###\nANSWER: B."
    assert record["conversations"][0]["value"] == "Q?\nA. x\nB. y"
    no_solution = to_conversation("7", {**problem, "solution": ""}, "train", explain=True)
    assert no_solution["conversations"][1]["value"] == "LECTURE: Lecture text.\n###\nANSWER: B."
    # such a model is scored with its own pattern
    assert parse_letter("LECTURE: …\n###\nANSWER: B.", re.compile(r"ANSWER: ([A-Z]).")) == "B"


def test_bad_problems_are_named() -> None:
    with pytest.raises(ScienceQAError, match="problem 9 has 6 choices"):
        to_conversation("9", {"question": "Q", "choices": list("abcdef"), "answer": 0}, "test")
    with pytest.raises(ScienceQAError, match="problem 9 has answer 3"):
        to_conversation("9", {"question": "Q", "choices": ["a", "b"], "answer": 3}, "test")
