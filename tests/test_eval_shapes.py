"""The demo's shapes task: exact match per question type, the blank-image control and the chance level."""

from __future__ import annotations

import json

import pytest

from llava_pl.demo.shapes_task import ShapesTask
from llava_pl.demo.table import format_table, per_type, table_rows

QUESTIONS = [  # question id, type, answer, shapes in the image
    ("q0", "color", "red", 1), ("q1", "color", "red", 2), ("q2", "color", "blue", 3), ("q3", "count", "2", 2),
    ("q4", "count", "1", 1),
]


@pytest.fixture
def task(tmp_path) -> ShapesTask:
    path = tmp_path / "questions_test.jsonl"
    path.write_text("".join(json.dumps({"question_id": qid, "image": f"{qid}.png", "text": "?", "answer": answer,
                                        "type": kind, "shapes": shapes}) + "\n"
                                for qid, kind, answer, shapes in QUESTIONS))
    return ShapesTask(path, tmp_path)


def test_scores_by_hand(task) -> None:
    """color: "Red." (q0 ✓ after lower-casing and the period), "blue" for red (q1 ✗), " Blue " (q2 ✓) → 2/3;
    blank: "red" ×3 → q0, q1 ✓ → 2/3; chance: "red" is 2 of 3 answers → 2/3.
    count: "2" ✓, "two" ≠ "1" ✗ → 1/2; blank: unanswered → 0; chance: 1 of 2 → 1/2.
    On images of two or three shapes: color q1 ✗, q2 ✓ → 1/2; count q3 ✓ → 1/1."""
    samples = task.samples()
    assert [s.key for s in samples[:2]] == ["q0", "q0/blank"] and len(samples) == 10
    answers = {"q0": "Red.", "q1": "blue", "q2": " Blue ", "q3": "2", "q4": "two",
               "q0/blank": "red", "q1/blank": "red", "q2/blank": "red"}
    table = per_type(task.score(samples, answers))
    assert table == {
        "color": {"accuracy": pytest.approx(2 / 3), "blank_accuracy": pytest.approx(2 / 3),
                  "chance": pytest.approx(2 / 3), "n": 3, "several_accuracy": 0.5, "several_n": 2},
        "count": {"accuracy": 0.5, "blank_accuracy": 0.0, "chance": 0.5, "n": 2, "several_accuracy": 1.0,
                  "several_n": 1},
    }
    assert "color              66.7%        66.7%    66.7%      3       50.0%      2" in format_table(table)


def test_questions_without_shape_counts_have_no_several_column(tmp_path) -> None:
    path = tmp_path / "questions_test.jsonl"
    path.write_text(json.dumps({"question_id": "q0", "image": "q0.png", "text": "?", "answer": "red",
                                "type": "color"}) + "\n")
    task = ShapesTask(path, tmp_path)
    table = per_type(task.score(task.samples(), {"q0": "red"}))
    assert table == {"color": {"accuracy": 1.0, "blank_accuracy": 0.0, "chance": 1.0, "n": 1}}
    assert "2-3 shapes" not in format_table(table)


def test_limit_keeps_the_first_questions_with_their_blank_twins(task) -> None:
    chosen = task.subset(task.samples(), 2)
    assert [s.key for s in chosen] == ["q0", "q0/blank", "q1", "q1/blank"]


def test_summary_is_the_table_and_answers_pair_each_question_with_its_blank_twin(task, tmp_path) -> None:
    samples = task.subset(task.samples(), 2)
    answers = {"q0": "red", "q0/blank": "blue", "q1": "green"}
    metrics = task.score(samples, answers)
    assert task.summary(metrics) == format_table(per_type(metrics))
    assert task.summary(metrics).splitlines()[1] == "color              50.0%         0.0%   100.0%      2        0.0%      1"
    (path,) = task.write_outputs(samples, answers, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(row["question_id"], row["answer"], row["prediction"], row["blank_prediction"]) for row in rows] == \
        [("q0", "red", "red", "blue"), ("q1", "red", "green", "")]


def test_table_rows_name_a_probe_by_its_task() -> None:
    """What report=shapes reads from <run>/eval/metrics.json: question types, and colour-naming probes by name."""
    results = {"shapes": {"color/accuracy": 1.0, "color/n": 3.0},
               "color_naming/caption": {"accuracy": 0.5, "n": 4}}
    assert table_rows(results) == {"color": {"accuracy": 1.0, "n": 3}, "caption": {"accuracy": 0.5, "n": 4}}
