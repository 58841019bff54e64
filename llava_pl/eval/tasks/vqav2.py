"""VQAv2: the VQA soft accuracy where answers are known (val), an EvalAI upload file always (test-dev).

LLaVA-1.5's VQAv2 number is test-dev, scored by the EvalAI server: LLaVA normalises each answer with EvalAI's
rules and uploads ``[{"question_id", "answer"}]`` for every question of test2015 (unanswered ones empty);
``write_outputs`` writes that file. Given annotations in VQAv2's format (``v2_mscoco_val2014_annotations.json``)
the answers are also scored here by the official ``vqaEval.py`` rules applied to that upload: the answer is
stripped of punctuation and has number words, articles and contractions normalised; the ten human answers are
only stripped of punctuation, and only when they disagree. Per answer type too (``yes/no``, ``number``, ``other``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava_pl.eval.task import Metrics, Sample, Task, TaskDataError, ratio, read_json, read_json_records, unique_keys
from llava_pl.eval.vqa_normalize import normalize_answer, soft_accuracy, strip_punctuation, words_numbers_articles

UPLOAD_FILE = "vqav2_upload.json"


def vqa_eval_accuracy(uploaded: str, human_answers: Sequence[str]) -> float:
    """The official per-question accuracy of an uploaded answer."""
    answer = uploaded.replace("\n", " ").replace("\t", " ").strip()
    answer = words_numbers_articles(strip_punctuation(answer))
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [strip_punctuation(human) for human in humans]
    return soft_accuracy(answer, humans)


class VQAv2Task(Task):
    """Args:
        questions: a LLaVA question file (``llava_vqav2_mscoco_test-dev2015.jsonl``, or one over val).
        annotations: VQAv2 annotations for local scoring (val); ``None`` for test-dev.
        upload_questions: the questions the upload file must cover (LLaVA: ``llava_vqav2_mscoco_test2015.jsonl``);
            ``None`` for the questions file itself.
        image_folder: the COCO images (``test2015`` or ``val2014``).
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        annotations: str | os.PathLike | None = None,
        upload_questions: str | os.PathLike | None = None,
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.annotations = annotations
        self.upload_questions = upload_questions

    def samples(self) -> list[Sample]:
        truth = {}
        if self.annotations is not None:
            truth = {int(entry["question_id"]): entry for entry in read_json(self.annotations)["annotations"]}
        samples = []
        for number, question in enumerate(read_json_records(self.questions), start=1):
            entry = truth.get(int(question["question_id"]))
            if self.annotations is not None and entry is None:
                raise TaskDataError(f"{self.questions} line {number}: question {question['question_id']} has no "
                                    f"annotation in {self.annotations}")
            target = None if entry is None else [answer["answer"] for answer in entry["answers"]]
            samples.append(Sample(key=str(question["question_id"]), question_id=question["question_id"],
                                  prompt=question["text"], image=question["image"], target=target,
                                  meta={"answer_type": entry.get("answer_type") if entry else None}))
        return unique_keys(samples, str(self.questions))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        if self.annotations is None:
            return {"answered": sum(sample.key in answers for sample in samples), "n": len(samples)}
        by_type: dict[str, list[float]] = defaultdict(list)
        for sample in samples:
            accuracy = 0.0
            if sample.key in answers:
                accuracy = vqa_eval_accuracy(normalize_answer(answers[sample.key]), sample.target)
            by_type[""].append(accuracy)
            if sample.meta["answer_type"]:
                by_type[sample.meta["answer_type"]].append(accuracy)
        metrics = {"accuracy": ratio(sum(by_type[""]), len(by_type[""])), "n": len(samples)}
        for answer_type, values in sorted(by_type.items()):
            if answer_type:
                metrics[f"{answer_type}/accuracy"] = ratio(sum(values), len(values))
        return metrics

    def write_outputs(self, samples: Sequence[Sample], answers: Mapping[str, str], out_dir: Path) -> list[Path]:
        covered = read_json_records(self.upload_questions) if self.upload_questions else samples
        ids = [row["question_id"] if isinstance(row, dict) else row.question_id for row in covered]
        upload = [{"question_id": int(qid),
                   "answer": normalize_answer(answers[str(qid)]) if str(qid) in answers else ""} for qid in ids]
        path = out_dir / UPLOAD_FILE
        path.write_text(json.dumps(upload) + "\n")
        return [path]
