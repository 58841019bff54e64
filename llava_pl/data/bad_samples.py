"""Bad samples: what can be wrong with one, the ``error | skip`` policy, and the per-reason counts of a run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from llava_pl.constants import IGNORE_INDEX
from llava_pl.data.conversation import SampleError
from llava_pl.errors import ConfigError

OnBadSample = Literal["error", "skip"]

REASONS: dict[str, str] = {
    "malformed": "malformed JSON: a line or shard entry that does not parse, a record without a conversations "
                 "list, a turn that is not a {from, value} pair",
    "roles": "roles that do not alternate user/assistant (or an unknown role, or no closing assistant turn)",
    "image_count": "the number of <image> placeholders differs from the number of images",
    "empty_turn": "an empty assistant turn",
    "missing_image": "an image file (or shard member) that does not exist",
    "unreadable_image": "an image file that cannot be read (permissions, a folder in its place, ...)",
    "corrupt_image": "image bytes that do not decode",
    "too_long": "cannot fit max_length without cutting an image, or no answer token fits",
    "template": "the conversation template refuses the conversation",
}


def check_policy(on_bad_sample: str) -> OnBadSample:
    if on_bad_sample not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    return on_bad_sample  # type: ignore[return-value]


class BadSampleReport:
    """Counts of the samples dropped under ``on_bad_sample=skip``, per reason, with a few examples each."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, error: SampleError) -> None:
        if error.reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {error.reason!r} (known: {sorted(REASONS)})")
        self.counts[error.reason] += 1
        examples = self.examples.setdefault(error.reason, [])
        if len(examples) < self.EXAMPLES:
            examples.append(str(error))

    def update(self, other: BadSampleReport) -> None:
        self.counts.update(other.counts)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine += examples[: self.EXAMPLES - len(mine)]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {reason: self.counts[reason] for reason in REASONS if self.counts[reason]}

    def summary(self, what: str = "bad samples") -> str:
        if not self.total:
            return f"{what}: none"
        lines = [f"{what}: {self.total} skipped"]
        for reason, count in self.as_dict().items():
            lines.append(f"  {reason:<17} {count:>8}  ({REASONS[reason]})")
            lines += [f"      e.g. {example}" for example in self.examples.get(reason, [])]
        return "\n".join(lines)


class DropBadSamples:
    """Wraps a collator: drops the samples that failed to load under ``on_bad_sample=skip`` (never replacing
    them by others, so no other sample's tokens or labels move) and records them in the batch as
    ``bad_samples`` ``[(id, reason, message), ...]``; also records each kept sample's ``sources``.

    A micro-batch of nothing but bad samples becomes one unsupervised pad token (loss 0), so that every rank
    still runs the step and none waits for another.
    """

    def __init__(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], pad_token_id: int) -> None:
        self.collator = collator
        self.pad_token_id = pad_token_id

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        bad = [(sample["id"], *sample["bad"]) for sample in samples if "bad" in sample]
        kept = [sample for sample in samples if "bad" not in sample]
        sources = [sample.get("source") for sample in kept]
        if not kept:
            kept = [{"id": "", "input_ids": torch.tensor([self.pad_token_id]),
                     "labels": torch.tensor([IGNORE_INDEX]), "pixel_values": torch.zeros(0, 3, 1, 1)}]
        batch = self.collator(kept)
        if bad:
            batch["bad_samples"] = bad
        if any(source is not None for source in sources):
            batch["sources"] = sources
        return batch
