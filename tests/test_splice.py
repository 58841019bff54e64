"""The splice: image features land exactly where the placeholders were, for mixed batches."""

from __future__ import annotations

import pytest
import torch

from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.model.llava import ImageCountError, check_image_positions, splice_image_features

TOKENS_PER_IMAGE = 3
DIM = 4


def _row(*parts: object) -> list[int]:
    """``_row(5, "img", 6)`` → ``[5, -200, -200, -200, 6]``."""
    ids: list[int] = []
    for part in parts:
        ids += [IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE if part == "img" else [int(part)]
    return ids


def _batch(rows: list[list[int]], pad: int = 0) -> torch.Tensor:
    length = max(len(row) for row in rows)
    return torch.tensor([row + [pad] * (length - len(row)) for row in rows])


def test_features_land_at_placeholders_in_reading_order() -> None:
    # row 0: two images, row 1: no image, row 2: one image at the end
    input_ids = _batch([_row(1, "img", 2, "img", 3), _row(4, 5, 6), _row(7, "img")])
    embeddings = torch.arange(input_ids.numel() * DIM, dtype=torch.float).reshape(*input_ids.shape, DIM) * -1
    features = torch.arange(1, 3 * TOKENS_PER_IMAGE * DIM + 1, dtype=torch.float).reshape(3, TOKENS_PER_IMAGE, DIM)
    out = splice_image_features(embeddings, input_ids, features)

    def positions(row: int) -> list[int]:
        return torch.nonzero(input_ids[row] == IMAGE_TOKEN_ID).flatten().tolist()

    assert torch.equal(out[0, positions(0)[:3]], features[0])
    assert torch.equal(out[0, positions(0)[3:]], features[1])
    assert torch.equal(out[2, positions(2)], features[2])
    text = input_ids != IMAGE_TOKEN_ID
    assert torch.equal(out[text], embeddings[text])  # text embeddings untouched


def test_per_sample_count_mismatch_names_the_sample() -> None:
    input_ids = _batch([_row(1, "img", 2), _row(3, 4)])
    with pytest.raises(ImageCountError, match="sample alpha: 3 image-token positions but 0 image"):
        # same total (1 image) but assigned to the wrong row: must not silently shift features
        check_image_positions(input_ids, torch.tensor([0, 1]), TOKENS_PER_IMAGE, ["alpha", "beta"])
    check_image_positions(input_ids, torch.tensor([1, 0]), TOKENS_PER_IMAGE, ["alpha", "beta"])


def test_total_mismatch_raises() -> None:
    input_ids = _batch([_row(1, "img", 2)])
    with pytest.raises(ImageCountError, match="3 image-token positions but 6 image features"):
        splice_image_features(torch.zeros(1, 5, DIM), input_ids, torch.ones(2, TOKENS_PER_IMAGE, DIM))
