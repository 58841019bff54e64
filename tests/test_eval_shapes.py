"""The demo's shapes task: exact match per question type, the blank-image control and the chance level."""

from __future__ import annotations

import json

import pytest

from llava_pl.eval.shapes import format_table, per_type
from llava_pl.eval.tasks.shapes import ShapesTask

QUESTIONS = [  # question id, type, answer
    ("q0", "color", "red"), ("q1", "color", "red"), ("q2", "color", "blue"), ("q3", "count", "2"), ("q4", "count", "1"),
]


@pytest.fixture
def task(tmp_path) -> ShapesTask:
    path = tmp_path / "questions_test.jsonl"
    path.write_text("".join(json.dumps({"question_id": qid, "image": f"{qid}.png", "text": "?", "answer": answer,
                                        "type": kind}) + "\n" for qid, kind, answer in QUESTIONS))
    return ShapesTask(path, tmp_path)


def test_scores_by_hand(task) -> None:
    """color: "Red." (q0 ✓ after lower-casing and the period), "blue" for red (q1 ✗), " Blue " (q2 ✓) → 2/3;
    blank: "red" ×3 → q0, q1 ✓ → 2/3; chance: "red" is 2 of 3 answers → 2/3.
    count: "2" ✓, "two" ≠ "1" ✗ → 1/2; blank: unanswered → 0; chance: 1 of 2 → 1/2."""
    samples = task.samples()
    assert [s.key for s in samples[:2]] == ["q0", "q0/blank"] and len(samples) == 10
    answers = {"q0": "Red.", "q1": "blue", "q2": " Blue ", "q3": "2", "q4": "two",
               "q0/blank": "red", "q1/blank": "red", "q2/blank": "red"}
    table = per_type(task.score(samples, answers))
    assert table == {
        "color": {"accuracy": pytest.approx(2 / 3), "blank_accuracy": pytest.approx(2 / 3),
                  "chance": pytest.approx(2 / 3), "n": 3},
        "count": {"accuracy": 0.5, "blank_accuracy": 0.0, "chance": 0.5, "n": 2},
    }
    assert "color              66.7%        66.7%    66.7%      3" in format_table(table)


def test_limit_keeps_the_first_questions_with_their_blank_twins(task) -> None:
    chosen = task.subset(task.samples(), 2)
    assert [s.key for s in chosen] == ["q0", "q0/blank", "q1", "q1/blank"]
