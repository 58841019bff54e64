"""The benchmark's length mix: LLaVA-1.5's proportions, and padding fractions computed as defined."""

from __future__ import annotations

import numpy as np

from bench.length_mix import draw_lengths, grouped_batches, padding_fraction, random_batches


def test_draws_follow_the_documented_mix() -> None:
    mix = draw_lengths(20_000, image_tokens=576, max_length=2048, seed=1)
    assert 0.93 < mix.has_image.mean() < 0.95
    assert mix.lengths.max() <= 2048 and (mix.lengths[mix.has_image] >= 576 + 8).all()
    assert abs(np.median(mix.text_lengths[mix.has_image]) - 180) < 10
    assert abs(np.median(mix.text_lengths[~mix.has_image]) - 700) < 50
    shorter = draw_lengths(20_000, image_tokens=9, max_length=256, seed=1)  # text scaled by 256 / 2048
    assert abs(np.median(shorter.text_lengths[shorter.has_image]) - 180 / 8) < 2


def test_padding_fractions() -> None:
    lengths = np.array([2, 4, 3, 3])
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == 1 - 12 / 14
    assert padding_fraction(lengths, [[0, 1], [2, 3]], packed=True) == 0.0
    mix = draw_lengths(2_000, image_tokens=196, max_length=512)
    random, grouped = random_batches(2_000, 8), grouped_batches(mix, 8)
    assert sorted(i for batch in random for i in batch) == list(range(2_000))
    assert padding_fraction(mix.lengths, grouped) < padding_fraction(mix.lengths, random) / 4
