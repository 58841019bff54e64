"""Template segments → token ids and labels, with each image placeholder expanded to its feature positions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from llava_pl.data.templates import Segment

TOKENIZATION_VERSION = 2
"""Bumped whenever the same record and tokenizer give other ids or labels, so that cached lengths are redone
(2: the whole prompt is tokenized at once and the tokenizer adds the BOS)."""

_PROBE = "a"


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
    add_special_tokens: bool = False,
) -> TokenizedSample:
    """Tokenizes the segments' text as one prompt, split only at image placeholders (as LLaVA's
    ``tokenizer_image_token`` does), so where a segment ends never changes the tokens.

    Labels follow the segments: a token is supervised when it lies in a supervised segment's text; one that
    straddles a boundary (the text up to the boundary, tokenized alone, ends in other tokens) belongs to the
    later segment. Image positions, and the special tokens the tokenizer adds with ``add_special_tokens`` (pass
    the template's: the BOS of LLaVA's templates), are ``IGNORE_INDEX``. Truncation to ``max_length`` moves back
    to the start of an image span rather than cut through it, so a sample never keeps part of an image.
    """
    text = "".join(segment.text for segment in segments)
    changes = _supervision_changes(segments)
    head, tail = _special_affixes(tokenizer) if add_special_tokens else ([], [])
    input_ids, labels = list(head), [IGNORE_INDEX] * len(head)
    start = 0
    for position, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position > 0:
            input_ids += [IMAGE_TOKEN_ID] * tokens_per_image
            labels += [IGNORE_INDEX] * tokens_per_image
            start += len(IMAGE_PLACEHOLDER)
        ids, supervised = _tokenize_piece(piece, start, changes, tokenizer)
        input_ids += ids
        labels += [token if flag else IGNORE_INDEX for token, flag in zip(ids, supervised)]
        start += len(piece)
    input_ids += tail
    labels += [IGNORE_INDEX] * len(tail)
    if max_length is not None and len(input_ids) > max_length:
        cut = max_length
        while cut > 0 and input_ids[cut - 1] == IMAGE_TOKEN_ID and input_ids[cut] == IMAGE_TOKEN_ID:
            cut -= 1
        input_ids, labels = input_ids[:cut], labels[:cut]
    num_images = sum(1 for token in input_ids if token == IMAGE_TOKEN_ID) // tokens_per_image
    return TokenizedSample(input_ids, labels, num_images)


def _supervision_changes(segments: Sequence[Segment]) -> list[tuple[int, bool]]:
    """``(character position, supervised from there on)`` wherever supervision starts or stops."""
    changes: list[tuple[int, bool]] = []
    position = 0
    for segment in segments:
        if segment.text and (not changes or changes[-1][1] != segment.supervised):
            changes.append((position, segment.supervised))
        position += len(segment.text)
    return changes


def _tokenize_piece(
    piece: str, start: int, changes: list[tuple[int, bool]], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[bool]]:
    """Ids of ``piece`` (the text from character ``start`` to the next image) and whether each is supervised."""
    if not piece:
        return [], []
    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
    inside = [(position - start, flag) for position, flag in changes if start < position < start + len(piece)]
    flags = [next(flag for position, flag in reversed(changes) if position <= start)] + [f for _, f in inside]
    cuts = [0]
    if inside:
        prefixes = tokenizer([piece[:position] for position, _ in inside], add_special_tokens=False)["input_ids"]
        for prefix in prefixes:
            cuts.append(max(cuts[-1], len(os.path.commonprefix([prefix, ids]))))
    cuts.append(len(ids))
    supervised: list[bool] = []
    for flag, begin, end in zip(flags, cuts, cuts[1:]):
        supervised += [flag] * (end - begin)
    return ids, supervised


def _special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after any text (a Llama tokenizer's BOS)."""
    bare = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE)["input_ids"]
    for begin in range(len(full) - len(bare) + 1):
        if full[begin : begin + len(bare)] == bare:
            return full[:begin], full[begin + len(bare) :]
    raise ValueError(f"{type(tokenizer).__name__} changes a text's own tokens when it adds special tokens: "
                     "the BOS cannot be told apart")
