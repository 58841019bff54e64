"""VQAv2: the official vqaEval.py accuracy applied to what LLaVA uploads (EvalAI-normalised answers), and the
upload file itself. No VQAv2 file is among the shared excerpts (LLaVA's test-dev question files are too
large to have been stored and its key is only on the EvalAI server), so questions and annotations are written
here in their published formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_pl.eval.predictions import answers_by_key, read_answer_file
from llava_pl.eval.runner import score_file
from llava_pl.eval.tasks.vqav2 import UPLOAD_FILE, VQAv2Task, vqa_eval_accuracy

SUFFIX = "\nAnswer the question using a single word or phrase."
# question id, answer type, the ten human answers, the model's answer, its accuracy and why
CASES = [
    (1, "number", ["2"] * 10, "Two", 1.0, "'Two' → '2' (number word), 10 humans agree"),
    (2, "yes/no", ["yes"] * 10, "Yes", 1.0, "lower-cased"),
    (3, "other", ["dark-red"] * 2 + ["red"] * 8, "Dark-red", 0.6,
     "the humans disagree, so theirs lose punctuation too: 'dark red' twice → 0.6"),
    (4, "other", ["dark-red"] * 10, "Dark-red", 0.0,
     "unanimous humans are compared as written: 'dark-red' ≠ 'dark red' (vqaEval's rule)"),
    (5, "other", ["cat"] * 3 + ["dog"] * 7, "The cat", 0.9, "article dropped, 3 humans"),
    (6, "other", ["blue"] * 10, None, 0.0, "unanswered"),
]


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    questions = tmp_path / "llava_vqav2_val.jsonl"
    questions.write_text("".join(json.dumps({"question_id": qid, "image": f"COCO_val2014_{qid:012d}.jpg",
                                             "text": "Question?" + SUFFIX, "category": "default"}) + "\n"
                                 for qid, *_ in CASES))
    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": qid, "image_id": qid, "answer_type": kind, "question_type": "what",
         "multiple_choice_answer": humans[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(humans)]}
        for qid, kind, humans, *_ in CASES]}))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": qid, "prompt": "Question?" + SUFFIX, "text": text}) + "\n"
                               for qid, _, _, text, *_ in CASES if text is not None))
    return questions, annotations, answers


@pytest.mark.parametrize(("qid", "kind", "humans", "text", "accuracy", "why"), CASES, ids=[str(c[0]) for c in CASES])
def test_official_accuracy_per_question(qid, kind, humans, text, accuracy, why, tmp_path) -> None:
    questions, annotations, _ = _files(tmp_path)
    task = VQAv2Task(questions, annotations)
    sample = next(s for s in task.samples() if s.question_id == qid)
    answers = {} if text is None else {sample.key: text}
    assert task.score([sample], answers)["accuracy"] == pytest.approx(accuracy), why


def test_whole_file_and_answer_types(tmp_path) -> None:
    questions, annotations, answers = _files(tmp_path)
    metrics = score_file(VQAv2Task(questions, annotations), answers)
    assert metrics["accuracy"] == pytest.approx((1 + 1 + 0.6 + 0 + 0.9 + 0) / 6)
    assert metrics["number/accuracy"] == 1.0 and metrics["yes/no/accuracy"] == 1.0
    assert metrics["other/accuracy"] == pytest.approx((0.6 + 0 + 0.9 + 0) / 4)


def test_upload_file_covers_every_test_question(tmp_path) -> None:
    """LLaVA uploads EvalAI-normalised answers for all of test2015, empty where test-dev asked nothing."""
    questions, _, answers = _files(tmp_path)
    everything = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    everything.write_text(questions.read_text() + json.dumps({"question_id": 99, "image": "x.jpg", "text": "?"}) + "\n")
    task = VQAv2Task(questions, annotations=None, upload_questions=everything)
    samples = task.samples()
    assert score_file(task, answers) == {"answered": 5, "n": 6}
    written = task.write_outputs(samples, answers_by_key(task, samples, read_answer_file(answers), "x"), tmp_path)
    upload = json.loads((tmp_path / UPLOAD_FILE).read_text())
    assert written == [tmp_path / UPLOAD_FILE]
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"},
                      {"question_id": 3, "answer": "dark red"}, {"question_id": 4, "answer": "dark red"},
                      {"question_id": 5, "answer": "cat"}, {"question_id": 6, "answer": ""},
                      {"question_id": 99, "answer": ""}]


def test_vqa_eval_rule_on_uploaded_answers() -> None:
    assert vqa_eval_accuracy("2", ["2"] * 10) == 1.0
    assert vqa_eval_accuracy("dark red", ["dark-red"] * 10) == 0.0
    assert vqa_eval_accuracy("dark red", ["dark-red"] * 9 + ["red"]) == 1.0
