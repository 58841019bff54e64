"""Colour naming on the demo's held-out shapes images: which colour the model names first, free-form.

Unlike the ``shapes`` task's exact match on a short answer, the answer here may be a whole caption ("A small
red circle at the top left."): the first colour word in it is the model's colour. It is right when the image
has a shape of that colour; on one-shape images (the default) that is the colour of the one shape. Every image
is also shown blank (the mean colour everywhere, key ``<id>/blank``), and ``chance`` is what always naming the
same, best colour scores, so a score reads against what the model names without looking.

The task is asked through a probe: a ``prompt`` and a ``template``. ``conf/eval/tasks/color_naming.yaml`` asks two,
``caption`` (the align stage's template: the model captions the image as it was trained to, suited to a model
after the align stage alone) and ``question`` (the LLM's own template with a question after the image).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from llava_pl.data.templates import Template
from llava_pl.demo.blank_control import BLANK_SUFFIX, BlankControlTask, blank_twin
from llava_pl.demo.table import format_table, per_type
from llava_pl.eval.task import Metrics, Sample, TaskDataError, ratio, read_json, unique_keys

ANSWERS_FILE = "answers.jsonl"


def first_color(text: str, colors: Sequence[str]) -> str | None:
    """The first of ``colors`` that ``text`` names as a word (case-insensitive), or None."""
    pattern = r"\b(" + "|".join(re.escape(color) for color in colors) + r")\b"
    found = re.search(pattern, text.lower())
    return found.group(1) if found else None


class ColorNamingTask(BlankControlTask):
    """Args:
        meta: the demo's ``meta_test.json`` (per image: ``image`` and its ``shapes`` with their ``color``).
        image_folder: the folder the image paths are relative to.
        prompt: the instruction sent after the image (the ``plain`` template drops it: the model captions).
        template: the conversation template the image is shown in; None: the model's own.
        shape_counts: which images take part, by their number of shapes.
        colors: the colour words an answer is searched for; default every colour of the meta file's shapes.
        blank_control: also show every image blank.
    """

    def __init__(
        self,
        meta: str | os.PathLike,
        image_folder: str | os.PathLike,
        prompt: str = "",
        template: Template | None = None,
        shape_counts: Sequence[int] = (1,),
        colors: Sequence[str] | None = None,
        blank_control: bool = True,
        max_new_tokens: int = 24,
    ) -> None:
        super().__init__(image_folder, max_new_tokens, template)
        self.meta = meta
        self.prompt = prompt
        self.shape_counts = tuple(shape_counts)
        self.colors = tuple(colors) if colors is not None else None
        self.blank_control = blank_control

    def records(self) -> list[dict]:
        records = read_json(self.meta)
        if not isinstance(records, list) or not all("image" in r and "shapes" in r for r in records):
            raise TaskDataError(f"{self.meta}: expected a list of {{'image', 'shapes'}} records (meta_<split>.json)")
        return records

    def vocabulary(self) -> tuple[str, ...]:
        """The colour words searched for: ``colors``, or every colour of the meta file's shapes."""
        if self.colors is not None:
            return self.colors
        return tuple(sorted({shape["color"] for record in self.records() for shape in record["shapes"]}))

    def samples(self) -> list[Sample]:
        samples = []
        for record in self.records():
            if len(record["shapes"]) not in self.shape_counts:
                continue
            key = os.path.splitext(record["image"])[0]
            target = tuple(sorted({shape["color"] for shape in record["shapes"]}))
            asked = Sample(key=key, question_id=key, prompt=self.prompt, image=record["image"], target=target,
                           meta={"question": key})
            samples += [asked, blank_twin(asked)] if self.blank_control else [asked]
        if not samples:
            raise TaskDataError(f"{self.meta}: no image has {' or '.join(map(str, self.shape_counts))} shapes")
        return unique_keys(samples, str(self.meta))

    def score(self, samples: Sequence[Sample], answers: Mapping[str, str]) -> Metrics:
        """``accuracy`` (with the image), ``blank_accuracy``, ``chance`` (the best constant colour), ``n``
        (images), and ``named``: the share of answers with the image that name any colour at all."""
        colors = self.vocabulary()
        asked = [sample for sample in samples if not sample.meta.get("blank")]
        blank = [sample for sample in samples if sample.meta.get("blank")]

        def named(sample: Sample) -> str | None:
            return first_color(answers.get(sample.key, ""), colors)

        def accuracy(members: list[Sample]) -> float:
            return ratio(sum(named(sample) in sample.target for sample in members), len(members))

        presence = Counter(color for sample in asked for color in sample.target)
        metrics: Metrics = {"accuracy": accuracy(asked)}
        if blank:
            metrics["blank_accuracy"] = accuracy(blank)
        metrics["chance"] = ratio(max(presence.values(), default=0), len(asked))
        metrics["named"] = ratio(sum(named(sample) is not None for sample in asked), len(asked))
        metrics["n"] = len(asked)
        return metrics

    def write_outputs(self, samples: Sequence[Sample], answers: Mapping[str, str], out_dir: Path) -> list[Path]:
        """``answers.jsonl``: per image, its colours and the answer with the image and with the blank image."""
        path = out_dir / ANSWERS_FILE
        with path.open("w") as file:
            file.writelines(json.dumps({"image": sample.image, "prompt": sample.prompt, "colors": list(sample.target),
                                        "prediction": answers.get(sample.key, ""),
                                        "blank_prediction": answers.get(sample.key + BLANK_SUFFIX, "")}) + "\n"
                            for sample in samples if not sample.meta.get("blank"))
        return [path]

    def summary(self, metrics: Metrics) -> str:
        return format_table(per_type(metrics, row_name="colour named"))
