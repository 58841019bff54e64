"""The demo tasks' blind control: every question is also asked about a blank image (the mean colour
everywhere), under the key ``<key>/blank``, so a score reads against what the model answers without looking."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llava_pl.data.images import ImageTransform
from llava_pl.eval.task import Sample, Task

BLANK_SUFFIX = "/blank"


class BlankControlTask(Task):
    """A task whose samples carry ``meta["question"]`` (the asked question's key) and ``meta["blank"]`` on the
    blank twins."""

    def image(self, sample: Sample, transform: ImageTransform) -> torch.Tensor | None:
        return transform.blank() if sample.meta.get("blank") else super().image(sample, transform)

    def subset(self, samples: Sequence[Sample], limit: int | None) -> list[Sample]:
        """The first ``limit`` questions, each with its blank twin."""
        if limit is None:
            return list(samples)
        keep = set(list(dict.fromkeys(sample.meta["question"] for sample in samples))[:limit])
        return [sample for sample in samples if sample.meta["question"] in keep]


def blank_twin(sample: Sample) -> Sample:
    return Sample(key=sample.key + BLANK_SUFFIX, question_id=sample.question_id, prompt=sample.prompt,
                  image=sample.image, target=sample.target, meta={**sample.meta, "blank": True})
