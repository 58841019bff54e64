"""POPE (object hallucination): yes/no questions in three splits (adversarial, popular, random).

Read as LLaVA reads it: LLaVA's one question file holds all three splits (``category``), and each split's
POPE label file lists the same questions in the same order, so the n-th question of a split takes the n-th
label line (checked: same image, same question). An answer is "no" when its first sentence, commas removed,
has the word ``No``, ``no`` or ``not``, and "yes" otherwise (LLaVA's ``eval_pope.py``; so ``NO`` reads as
yes). Per split: accuracy, precision, recall, F1 and the share of "yes" answers, with "yes" the positive
class; ``f1`` and ``accuracy`` without a split are their means over the splits, as LLaVA-1.5 reports POPE.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

from llava_pl.eval.task import Metrics, Sample, Task, TaskDataError, ratio, read_json_records, unique_keys

NEGATIVE_WORDS = frozenset({"No", "no", "not"})


def reads_as_yes(answer: str) -> bool:
    first_sentence = answer.split(".")[0]
    return not NEGATIVE_WORDS.intersection(first_sentence.replace(",", "").split(" "))


def binary_metrics(predicted_yes: Sequence[bool], label_yes: Sequence[bool]) -> dict[str, float]:
    pairs = list(zip(predicted_yes, label_yes))
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    tn = sum(not p and not t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall), "yes_ratio": ratio(tp + fp, len(pairs)),
            "n": len(pairs)}


class PopeTask(Task):
    """Args:
        questions: LLaVA's ``llava_pope_test.jsonl``.
        labels: per split (the questions' ``category``), POPE's ``coco_pope_<split>.json``.
        image_folder: COCO val2014 images.
    """

    def __init__(
        self,
        questions: str | os.PathLike,
        labels: Mapping[str, str | os.PathLike],
        image_folder: str | os.PathLike | None = None,
        max_new_tokens: int = 128,
    ) -> None:
        super().__init__(image_folder, max_new_tokens)
        self.questions = questions
        self.labels = dict(labels)

    def samples(self) -> list[Sample]:
        by_split: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        for number, question in enumerate(read_json_records(self.questions), start=1):
            by_split[question.get("category")].append((number, question))
        unknown = sorted(set(by_split) - set(self.labels), key=str)
        if unknown:
            raise TaskDataError(f"{self.questions}: split(s) {unknown} have no label file in labels "
                                f"({sorted(self.labels)})")
        labelled: dict[int, Sample] = {}
        for split, questions in by_split.items():
            labels = read_json_records(self.labels[split])
            if len(labels) != len(questions):
                raise TaskDataError(f"{self.labels[split]} has {len(labels)} labels but {self.questions} has "
                                    f"{len(questions)} {split!r} questions; POPE pairs them line by line")
            for (number, question), label in zip(questions, labels):
                asked = question["text"].split("\n")[0]
                if asked != label["text"] or question["image"] != label["image"]:
                    raise TaskDataError(
                        f"{self.questions} line {number} ({question['image']}: {asked!r}) does not match its label "
                        f"line in {self.labels[split]} ({label['image']}: {label['text']!r})"
                    )
                if label["label"] not in ("yes", "no"):
                    raise TaskDataError(f"{self.labels[split]}: question {label.get('question_id')} has label "
                                        f"{label['label']!r}, not yes/no")
                labelled[number] = Sample(key=str(question["question_id"]), question_id=question["question_id"],
                                          prompt=question["text"], image=question["image"],
                                          target=label["label"] == "yes", meta={"split": split})
        return unique_keys([labelled[number] for number in sorted(labelled)], str(self.questions))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        by_split: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_split[sample.meta["split"]].append(sample)
        metrics: Metrics = {}
        for split, members in sorted(by_split.items()):
            # an unanswered question reads as the opposite of its label: wrong, whatever the label
            predicted = [reads_as_yes(answers[s.key]) if s.key in answers else not s.target for s in members]
            for name, value in binary_metrics(predicted, [s.target for s in members]).items():
                metrics[f"{split}/{name}"] = value
        splits = sorted(by_split)
        metrics["f1"] = ratio(sum(metrics[f"{split}/f1"] for split in splits), len(splits))
        metrics["accuracy"] = ratio(sum(metrics[f"{split}/accuracy"] for split in splits), len(splits))
        return metrics
