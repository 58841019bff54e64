"""Batching: pad token rows, concatenate images, keep per-sample image counts and ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from llava_pl.constants import IGNORE_INDEX


def pad_rows(rows: Sequence[torch.Tensor], value: int, side: Literal["left", "right"]) -> torch.Tensor:
    length = max(row.shape[0] for row in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for index, row in enumerate(rows):
        if side == "right":
            out[index, : row.shape[0]] = row
        else:
            out[index, length - row.shape[0] :] = row
    return out


class LlavaCollator:
    """Collates data set items into a batch for ``LlavaModel``.

    Training pads on the right; generation needs ``padding_side="left"`` so that every prompt ends at
    the last column.
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["left", "right"] = "right") -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        input_ids = [sample["input_ids"] for sample in samples]
        batch = {
            "input_ids": pad_rows(input_ids, self.pad_token_id, self.padding_side),
            "attention_mask": pad_rows([torch.ones_like(ids) for ids in input_ids], 0, self.padding_side),
            "pixel_values": torch.cat([sample["pixel_values"] for sample in samples]),
            "images_per_sample": torch.tensor([sample["pixel_values"].shape[0] for sample in samples]),
            "sample_ids": [sample["id"] for sample in samples],
        }
        if all("labels" in sample for sample in samples):
            batch["labels"] = pad_rows([sample["labels"] for sample in samples], IGNORE_INDEX, self.padding_side)
        return batch
