"""Padding-free batches: a micro-batch's samples concatenated into one row (``data.packing=true``).

Each sample keeps its own position ids (restarting at 0) and its own attention (``sample_lengths`` gives the
boundaries; ``llava_pl.model.varlen_attention`` confines attention to them). The first label of every sample is
ignored, so the last token of one sample is never trained to predict the first token of the next: the loss is
the one of the same samples padded, over the same supervised tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llava_pl.common.packing import position_ids_of
from llava_pl.constants import IGNORE_INDEX


class PackingCollator:
    """Collates data set items into one packed row for ``LlavaModel``.

    The batch holds ``input_ids``, ``labels``, ``position_ids`` and ``attention_mask`` (all ones) of shape
    ``(1, total)``, ``sample_lengths`` ``(samples,)``, and, like the padded collator, ``pixel_values``,
    ``images_per_sample`` and ``sample_ids``. There is no padding at all: attention that costs each sample its
    own length squared (flash-attention varlen, or one SDPA call per sample) makes one long row as cheap as
    separate rows, so nothing is gained by cutting it.
    """

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot pack an empty batch")
        lengths = [int(sample["input_ids"].shape[0]) for sample in samples]
        empty = [sample["id"] for sample, length in zip(samples, lengths) if length == 0]
        if empty:
            raise ValueError(f"sample {empty[0]}: no tokens to pack")
        input_ids = torch.cat([sample["input_ids"] for sample in samples]).unsqueeze(0)
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": position_ids_of(lengths).unsqueeze(0),
            "sample_lengths": torch.tensor(lengths),
            "pixel_values": torch.cat([sample["pixel_values"] for sample in samples]),
            "images_per_sample": torch.tensor([sample["pixel_values"].shape[0] for sample in samples]),
            "sample_ids": [sample["id"] for sample in samples],
        }
        if all("labels" in sample for sample in samples):
            labels = [sample["labels"].clone() for sample in samples]
            for row in labels:
                row[0] = IGNORE_INDEX  # nothing before a sample's first token belongs to it
            batch["labels"] = torch.cat(labels).unsqueeze(0)
        return batch
