"""POPE: LLaVA's question file paired with POPE's label files line by line, yes/no parsing as eval_pope.py
reads answers, and LLaVA-1.5-13B's published answers scored per split."""

from __future__ import annotations

import json

import pytest

from llava_pl.eval.runner import score_file
from llava_pl.eval.task import TaskDataError
from llava_pl.eval.tasks.pope import PopeTask, reads_as_yes
from tests.conftest import formats_file

SPLITS = ("adversarial", "popular", "random")


def _task(half: str = "") -> PopeTask:
    return PopeTask(formats_file(f"{half}llava_pope_test.sample.jsonl"),
                    {split: formats_file(f"{half}coco_pope_{split}.sample.json") for split in SPLITS})


@pytest.mark.parametrize(("answer", "yes", "why"), [
    ("Yes", True, "no negative word"),
    ("No", False, "'No'"),
    ("No.", False, "first sentence is 'No'"),
    ("no", False, "'no'"),
    ("NO", True, "only 'No', 'no' and 'not' count: upper case reads as yes"),
    ("Yes, there is a dog.", True, "commas dropped, no negative word"),
    ("There is not a dog in the image.", False, "'not'"),
    ("Yes. There is no cat.", True, "only the first sentence counts"),
    ("No, there is no dog", False, "'No,' loses its comma"),
    ("Nope", True, "'Nope' is not one of the words"),
    ("I cannot tell", True, "'cannot' is not 'not'"),
    ("yes,no", True, "'yes,no' becomes the one word 'yesno'"),
    ("no\nyes", True, "words split on spaces only: 'no\\nyes' is one word"),
])
def test_yes_no_parsing(answer, yes, why) -> None:
    assert reads_as_yes(answer) is yes, why


def test_questions_pair_with_labels_in_order() -> None:
    samples = _task().samples()
    assert len(samples) == 36
    by_id = {sample.key: sample for sample in samples}
    # random's ids are offset by 10,000,000 in LLaVA's file; the label file counts from 1 within the split
    assert by_id["10000004"].meta["split"] == "random" and by_id["10000004"].target is False  # "a sandwich": no
    assert by_id["1"].target is True and by_id["2"].target is False


def test_llava_13b_answers_first_half() -> None:
    """Labels alternate yes/no in every split (y n y n …); LLaVA-1.5-13B answered:
    adversarial  N N Y N Y N Y Y Y N Y Y → TP 3,5,7,9,11; FP 8,12; TN 2,4,6,10; FN 1 → 5/2/4/1
    popular      N N Y N Y N Y N Y Y Y N → TP 3,5,7,9,11; FP 10;   TN 2,4,6,8,12; FN 1 → 5/1/5/1
    random       N N Y N Y N Y N Y N Y N → TP 3,5,7,9,11;          TN 2,4,6,8,10,12; FN 1 → 5/0/6/1
    """
    metrics = score_file(_task(), formats_file("llava_pope_test.answers.llava-v1.5-13b.sample.jsonl"))
    expected = {  # accuracy (TP+TN)/12, precision TP/(TP+FP), recall TP/(TP+FN), F1, yes ratio (TP+FP)/12
        "adversarial": (9 / 12, 5 / 7, 5 / 6, 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 7 / 12),
        "popular": (10 / 12, 5 / 6, 5 / 6, 5 / 6, 6 / 12),
        "random": (11 / 12, 1.0, 5 / 6, 10 / 11, 5 / 12),
    }
    for split, (accuracy, precision, recall, f1, yes_ratio) in expected.items():
        assert metrics[f"{split}/accuracy"] == pytest.approx(accuracy)
        assert metrics[f"{split}/precision"] == pytest.approx(precision)
        assert metrics[f"{split}/recall"] == pytest.approx(recall)
        assert metrics[f"{split}/f1"] == pytest.approx(f1)
        assert metrics[f"{split}/yes_ratio"] == pytest.approx(yes_ratio)
        assert metrics[f"{split}/n"] == 12
    assert metrics["adversarial/f1"] == pytest.approx(10 / 13)
    assert metrics["f1"] == pytest.approx((10 / 13 + 5 / 6 + 10 / 11) / 3)


def test_llava_13b_answers_second_half() -> None:
    """Same label pattern; answers (ids 1501-1512 of each split):
    adversarial  Y Y Y N N N Y N Y N Y N → TP 1,3,7,9,11; FP 2; TN 4,6,8,10,12; FN 5 → 5/1/5/1
    popular      Y N Y N N N Y N Y N Y N → TP 1,3,7,9,11; TN 2,4,6,8,10,12; FN 5      → 5/0/6/1
    random       Y N N N N N Y N Y N Y N → TP 1,7,9,11;  TN 2,4,6,8,10,12; FN 3,5     → 4/0/6/2
    """
    metrics = score_file(_task("more/"), formats_file("more/llava_pope_test.answers.llava-v1.5-13b.sample.jsonl"))
    assert metrics["adversarial/accuracy"] == pytest.approx(10 / 12)
    assert metrics["adversarial/f1"] == pytest.approx(5 / 6)
    assert metrics["popular/accuracy"] == pytest.approx(11 / 12)
    assert metrics["popular/f1"] == pytest.approx(10 / 11)
    assert metrics["random/recall"] == pytest.approx(4 / 6)
    assert metrics["random/f1"] == pytest.approx(0.8)  # 2 · 1 · (2/3) / (1 + 2/3)
    assert metrics["random/yes_ratio"] == pytest.approx(4 / 12)


def test_misaligned_label_file_is_named(tmp_path) -> None:
    labels = formats_file("coco_pope_random.sample.json").read_text().splitlines()
    swapped = tmp_path / "coco_pope_random.json"
    swapped.write_text("\n".join([labels[1], labels[0], *labels[2:]]) + "\n")
    task = PopeTask(formats_file("llava_pope_test.sample.jsonl"),
                    {"adversarial": formats_file("coco_pope_adversarial.sample.json"),
                     "popular": formats_file("coco_pope_popular.sample.json"), "random": swapped})
    with pytest.raises(TaskDataError, match=r"llava_pope_test.sample.jsonl line 13 .*snowboard.* does not match"):
        task.samples()


def test_unanswered_questions_count_as_wrong() -> None:
    task = _task()
    samples = task.samples()
    answers = {sample.key: ("Yes" if sample.target else "No") for sample in samples}
    assert task.score(samples, answers)["accuracy"] == 1.0
    del answers["1"], answers["2"]  # one yes and one no question of adversarial left unanswered
    metrics = task.score(samples, answers)
    assert metrics["adversarial/accuracy"] == pytest.approx(10 / 12)
    assert json.dumps(metrics)  # plain numbers, ready for metrics.json
