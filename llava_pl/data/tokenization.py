"""Template segments → token ids and labels, with each image placeholder expanded to its feature positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from llava_pl.data.templates import Segment


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    num_images: int
    """Images whose positions survived truncation (the first ``num_images`` of the sample)."""


def tokenize_segments(
    segments: Sequence[Segment],
    tokenizer: PreTrainedTokenizerBase,
    tokens_per_image: int,
    max_length: int | None = None,
) -> TokenizedSample:
    """Tokenizes each segment on its own and concatenates the ids.

    Supervised segments keep their ids as labels, everything else (and every image position) is
    ``IGNORE_INDEX``. Truncation to ``max_length`` moves back to the start of an image span rather than
    cut through it, so a sample never keeps part of an image.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for segment in segments:
        for position, piece in enumerate(segment.text.split(IMAGE_PLACEHOLDER)):
            if position > 0:
                input_ids += [IMAGE_TOKEN_ID] * tokens_per_image
                labels += [IGNORE_INDEX] * tokens_per_image
            if piece:
                ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                input_ids += ids
                labels += ids if segment.supervised else [IGNORE_INDEX] * len(ids)
    if max_length is not None and len(input_ids) > max_length:
        cut = max_length
        while cut > 0 and input_ids[cut - 1] == IMAGE_TOKEN_ID and input_ids[cut] == IMAGE_TOKEN_ID:
            cut -= 1
        input_ids, labels = input_ids[:cut], labels[:cut]
    num_images = sum(1 for token in input_ids if token == IMAGE_TOKEN_ID) // tokens_per_image
    return TokenizedSample(input_ids, labels, num_images)
