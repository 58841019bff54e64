"""Shared pieces of the webdataset tests: a small JSON data set, its shards, and batch comparisons."""

from __future__ import annotations

from pathlib import Path

import torch

from llava_pl.data.images import ImageTransform
from llava_pl.to_wds import convert
from tests.data_helpers import mixed_records, write_dataset

SHARD_SIZE = 10


def json_source(folder: Path) -> Path:
    """36 mixed records (images and text-only) over drawn images, as a JSON file in ``folder``."""
    return write_dataset(folder, mixed_records(36))


def shard_folder(source: Path, out: Path, transform: ImageTransform | None = None) -> Path:
    """``source`` converted to shards of ``SHARD_SIZE`` records (images pre-processed for ``transform`` if given)."""
    convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False, transform=transform)
    return out


def train_batches(module, count: int | None = None) -> list[dict]:
    """The first ``count`` (default all) training batches of a data module, set up for fitting."""
    module.setup("fit")
    found = []
    for batch in module.train_dataloader():
        found.append(batch)
        if count is not None and len(found) == count:
            break
    return found


def assert_same(left: list[dict], right: list[dict]) -> None:
    """Two lists of batches hold the same samples, ids, tokens and pixels, in the same order."""
    assert len(left) == len(right) > 0
    for a, b in zip(left, right):
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("input_ids", "labels", "attention_mask", "pixel_values", "images_per_sample"):
            assert torch.equal(a[key], b[key]), key
