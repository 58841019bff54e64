"""Length grouping: token-accurate lengths measured once and cached; micro-batches of one modality and similar
lengths, the same number of steps and about the same tokens on every rank; exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava_pl.data.dataset import LlavaDataset
from llava_pl.data.grouping import modality_length_order
from llava_pl.data.lengths import cached_scan, scan
from llava_pl.data.sampler import LengthGrouping, ResumableSampler
from llava_pl.data.templates import ChatTemplate
from tests.data_helpers import TOKENS_PER_IMAGE, mixed_records, transform, write_dataset

WORLD, BATCH = 2, 4


def _random_data(size: int = 203, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    has_image = rng.random(size) < 0.8
    lengths = np.where(has_image, 576, 0) + rng.integers(10, 400, size)
    return lengths, has_image


def _padding(steps: list[list[list[int]]], lengths: np.ndarray) -> float:
    padded = sum(max(lengths[i] for i in batch) * len(batch) for step in steps for batch in step)
    return 1 - sum(lengths[i] for step in steps for batch in step for i in batch) / padded


def test_groups_are_one_modality_similar_lengths_and_balanced_over_ranks() -> None:
    lengths, has_image = _random_data()
    steps = modality_length_order(range(len(lengths)), lengths, has_image, BATCH, WORLD,
                                  torch.Generator().manual_seed(0), pool=8)
    assert all(len(step) == WORLD and all(len(batch) == BATCH for batch in step) for step in steps)
    flat = [index for step in steps for batch in step for index in batch]
    assert set(flat) == set(range(len(lengths))) and len(flat) - len(lengths) < WORLD * BATCH  # padding only
    mixed = [step for step in steps if len({bool(has_image[i]) for batch in step for i in batch}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] in steps[-2:])  # only the leftovers mix, as in LLaVA
    for step in steps:
        totals = [int(sum(lengths[i] for i in batch)) for batch in step]
        assert max(totals) - min(totals) <= max(lengths[i] for batch in step for i in batch)
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    random_steps = [[shuffled[at + r * BATCH: at + (r + 1) * BATCH] for r in range(WORLD)]
                    for at in range(0, len(shuffled) - WORLD * BATCH + 1, WORLD * BATCH)]
    assert _padding(steps, lengths) < 0.5 * _padding(random_steps, lengths)


def test_grouped_sampler_gives_every_rank_the_same_steps_and_resumes_exactly() -> None:
    lengths, has_image = _random_data(101)
    grouping = LengthGrouping(lengths, has_image, BATCH, pool=4)
    samplers = [ResumableSampler(len(lengths), 5, rank=rank, world_size=WORLD, grouping=grouping)
                for rank in range(WORLD)]
    shares = [list(sampler) for sampler in samplers]
    assert len(shares[0]) == len(shares[1]) == len(samplers[0]) and len(shares[0]) % BATCH == 0
    for step in range(len(shares[0]) // BATCH):  # step by step, the two ranks see one modality each
        for share in shares:
            assert len({bool(has_image[i]) for i in share[step * BATCH:(step + 1) * BATCH]}) == 1 or \
                step == len(shares[0]) // BATCH - 1
    samplers[1].set_epoch(1)
    next_epoch = list(samplers[1])
    assert next_epoch != shares[1]
    resumed = ResumableSampler(len(lengths), 5, rank=1, world_size=WORLD, grouping=grouping)
    resumed.start_at(1, 2 * BATCH)
    assert list(resumed) == next_epoch[2 * BATCH:]
    good = [i for i in range(len(lengths)) if i % 7]  # the bad samples left out
    subset = ResumableSampler(len(lengths), 5, world_size=1, indices=good, grouping=grouping)
    assert set(subset) == set(good)


@pytest.fixture
def dataset(tmp_path, tokenizer) -> LlavaDataset:
    path = write_dataset(tmp_path / "data", mixed_records(30))
    return LlavaDataset(path, path.parent, tokenizer, ChatTemplate(), transform(), TOKENS_PER_IMAGE, max_length=80)


def test_lengths_are_token_accurate_and_cached(dataset, tmp_path, monkeypatch) -> None:
    result = cached_scan(dataset, tmp_path / "cache")
    for index in range(len(dataset)):
        item = dataset[index]
        assert result.lengths[index] == item["input_ids"].shape[0] <= 80  # text + image tokens, truncated
        assert result.has_image[index] == (item["pixel_values"].shape[0] > 0)
    assert int(result.lengths[~result.has_image].max()) > 0
    assert (scan(dataset, workers=2, min_parallel=1).lengths == result.lengths).all()  # forked workers agree

    def must_not_run(index):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(dataset, "check", must_not_run)
    assert (cached_scan(dataset, tmp_path / "cache").lengths == result.lengths).all()
    dataset.max_length = 60  # another limit: other lengths, measured anew
    with pytest.raises(AssertionError, match="measured again"):
        cached_scan(dataset, tmp_path / "cache")


def test_a_cached_bad_sample_is_checked_again_once_mended(dataset, tmp_path) -> None:
    image = tmp_path / "data" / "img" / "0000.png"
    kept = image.read_bytes()
    image.unlink()
    missing = cached_scan(dataset, tmp_path / "cache")
    assert [entry[0] for entry in missing.bad] == [0] and missing.lengths[0] == 0
    assert [entry[0] for entry in cached_scan(dataset, tmp_path / "cache").bad] == [0]  # still missing
    image.write_bytes(kept)
    mended = cached_scan(dataset, tmp_path / "cache")
    assert mended.bad == [] and mended.lengths[0] > 0
