"""Sample lengths drawn like LLaVA-1.5's instruction mix (llava_v1_5_mix665k), and the padding each batching gives.

The mix: 624k of its 665k samples (94%) have one image (VQAv2, GQA, OKVQA, OCR-VQA, A-OKVQA, TextCaps, RefCOCO,
Visual Genome, LLaVA-Instruct), 40k (6%) are ShareGPT text-only conversations. The text lengths below are a model
of that mix, not a measurement of the file (it is not available here): in LLaVA-1.5's 2048-token context, an
image sample has 576 image positions plus a log-normal text length with median 180 tokens (geometric standard
deviation e^0.6: short multi-turn VQA up to long LLaVA-Instruct conversations); a text-only sample has a
log-normal length with median 700 (e^0.8, ShareGPT's long conversations); both are cut at the context length.
A benchmark size with a shorter context (``max_length``) scales the text lengths by ``max_length / 2048`` and
uses its own encoder's image positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LLAVA_CONTEXT = 2048
IMAGE_FRACTION = 0.94
IMAGE_TEXT_MEDIAN, IMAGE_TEXT_SIGMA = 180, 0.6
TEXT_ONLY_MEDIAN, TEXT_ONLY_SIGMA = 700, 0.8
MIN_TEXT = 8


@dataclass
class LengthMix:
    """Per sample: total length (image positions included), text length and whether it has an image."""

    lengths: np.ndarray
    text_lengths: np.ndarray
    has_image: np.ndarray


def draw_lengths(count: int, image_tokens: int, max_length: int, seed: int = 0) -> LengthMix:
    """``count`` samples of the mix for a model with ``image_tokens`` positions per image and ``max_length``."""
    rng = np.random.default_rng(seed)
    scale = max_length / LLAVA_CONTEXT
    has_image = rng.random(count) < IMAGE_FRACTION
    median = np.where(has_image, IMAGE_TEXT_MEDIAN, TEXT_ONLY_MEDIAN) * scale
    sigma = np.where(has_image, IMAGE_TEXT_SIGMA, TEXT_ONLY_SIGMA)
    text = np.round(median * np.exp(sigma * rng.standard_normal(count))).astype(int)
    room = max_length - np.where(has_image, image_tokens, 0)
    text = np.clip(text, MIN_TEXT, room)
    return LengthMix(text + np.where(has_image, image_tokens, 0), text, has_image)


def random_batches(count: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Shuffled micro-batches, the last incomplete one dropped (the training loader's default)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[start:start + batch_size] for start in range(0, count - batch_size + 1, batch_size)]


def grouped_batches(mix: LengthMix, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Micro-batches of one modality and similar length: the training sampler's ``group_by_length`` order."""
    from llava_pl.data.grouping import modality_length_order

    steps = modality_length_order(range(len(mix.lengths)), mix.lengths, mix.has_image, batch_size, 1,
                                  torch.Generator().manual_seed(seed))
    return [micro for step in steps for micro in step]


def padding_fraction(lengths: np.ndarray, batches: list[list[int]], packed: bool = False) -> float:
    """Padding positions over all positions: padded batches pad to their longest sample; a packed batch is one
    row of exactly its samples (``llava_pl.data.packing``)."""
    real = sum(int(lengths[batch].sum()) for batch in batches)
    total = real if packed else sum(int(lengths[batch].max()) * len(batch) for batch in batches)
    return 1 - real / total
