"""Webdataset shards, the loaders: shards read by position (``data=llava``) or streamed (``data=wds``) give the
same batches as the JSON they came from, split over ranks and workers and mixed by weight; shards with
pre-processed images give the JSON's pixels bit for bit and refuse another image transform. The converter:
tests/test_wds_convert.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.images import ImageTransform
from llava_pl.data.wds import WdsDataModule
from llava_pl.to_wds import convert
from tests.data_helpers import connect, mixed_records, processor, transform, write_dataset
from tests.wds_helpers import SHARD_SIZE, assert_same, json_source, shard_folder, train_batches


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return json_source(tmp_path_factory.mktemp("json"))


@pytest.fixture(scope="module")
def shards(source: Path, tmp_path_factory) -> Path:
    return shard_folder(source, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def preprocessed(source: Path, tmp_path_factory) -> Path:
    return shard_folder(source, tmp_path_factory.mktemp("preprocessed"), transform())


@pytest.mark.parametrize("group_by_length", [False, True], ids=["shuffled", "grouped"])
def test_shards_and_json_give_the_same_batches(source, shards, tokenizer, tmp_path, group_by_length) -> None:
    def module(train):
        data = LlavaDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=7,
                               group_by_length=group_by_length, length_cache=str(tmp_path / "cache"))
        connect(data, tokenizer)
        return data

    from_json, from_shards = train_batches(module(source)), train_batches(module(shards))
    assert_same(from_json, from_shards)
    other = LlavaDataModule(str(shards), None, micro_batch_size=4, num_workers=0, seed=8,
                            group_by_length=group_by_length)
    connect(other, tokenizer)
    assert [b["sample_ids"] for b in train_batches(other)] != [b["sample_ids"] for b in from_shards]


@pytest.mark.parametrize("resampled", [False, True], ids=["dealt", "resampled"])
def test_streams_of_shards_and_json_give_the_same_batches(source, shards, tokenizer, resampled) -> None:
    def module(train, seed=3):
        data = WdsDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=seed,
                             samples_per_epoch=24, shuffle_buffer=8, resampled=resampled, shard_size=SHARD_SIZE)
        connect(data, tokenizer)
        return data

    from_shards = train_batches(module(shards))
    assert len(from_shards) == 6  # samples_per_epoch / micro_batch_size, whatever the data holds
    assert_same(train_batches(module(source)), from_shards)
    assert [b["sample_ids"] for b in train_batches(module(shards, seed=4))] != [b["sample_ids"] for b in from_shards]


def test_stream_reads_pipe_urls_and_splits_over_ranks_and_workers(shards, tokenizer) -> None:
    names = sorted(path.name for path in shards.glob("*.tar"))
    pattern = f"pipe:cat {shards}/{names[0][:-10]}{{000000..{len(names) - 1:06d}}}.tar"
    seen = {}
    for rank in (0, 1):
        data = WdsDataModule(pattern, None, micro_batch_size=2, num_workers=2, samples_per_epoch=16,
                             shuffle_buffer=1, resampled=False)
        connect(data, tokenizer)
        data.setup("fit")
        data._rank = lambda rank=rank: (rank, 2)  # as under DDP with two ranks
        loader = data.train_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader) == 4  # 16 samples / (2 ranks x 2 per batch), the same on both ranks
        seen[rank] = [sample_id for batch in batches for sample_id in batch["sample_ids"]]
    # four shards dealt to 2 ranks x 2 workers: each worker reads its own shard (ids never span two shards)
    assert len(names) == 4 and set(seen[0]).isdisjoint(seen[1])


def test_mixture_of_sources_by_weight_with_counts(source, shards, tokenizer, tmp_path) -> None:
    other = write_dataset(tmp_path / "chat", mixed_records(8, seed=5, text_every=1), "chat.json")  # text-only chat
    train = [{"path": str(shards), "weight": 1.0, "name": "mix"},
             {"path": str(other), "image_folder": str(other.parent), "weight": 1.5, "name": "chat"}]
    data = LlavaDataModule(train, None, micro_batch_size=4, num_workers=0)
    connect(data, tokenizer)
    data.setup("fit")
    assert data.train_set.plan["mix"]["per_epoch"] == 36 and data.train_set.plan["chat"]["per_epoch"] == 12
    assert data.source_names == ["mix", "chat"]
    drawn = data.train_set.epoch_indices
    assert sum(index >= 36 for index in drawn) == 12 and len(set(i for i in drawn if i >= 36)) == 8
    sources = [s for batch in data.train_dataloader() for s in batch["sources"]]
    assert sources.count("chat") == 12 and sources.count("mix") == 36

    stream = WdsDataModule(train, None, micro_batch_size=4, num_workers=0, samples_per_epoch=400, shuffle_buffer=4)
    connect(stream, tokenizer)
    streamed = [s for batch in train_batches(stream) for s in batch["sources"]]
    assert len(streamed) == 400 and 0.2 < streamed.count("chat") / streamed.count("mix") < 0.45  # 12 : 36


def test_shards_read_by_loader_workers_match_the_main_process(shards, tokenizer) -> None:
    def module(workers):
        data = LlavaDataModule(str(shards), None, micro_batch_size=4, num_workers=workers, seed=2)
        connect(data, tokenizer)
        return data

    alone = module(0)
    batches = train_batches(alone)
    forked = module(2)
    forked.setup("fit")
    forked.train_set[0]  # files opened here before the workers fork must not be shared with them
    assert_same([batch for batch in forked.train_dataloader()], batches)


@pytest.mark.parametrize("group_by_length", [False, True], ids=["shuffled", "grouped"])
def test_preprocessed_shards_give_the_json_batches(source, preprocessed, tokenizer, tmp_path,
                                                   group_by_length) -> None:
    def module(train):
        data = LlavaDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=7,
                               group_by_length=group_by_length, length_cache=str(tmp_path / "cache"))
        connect(data, tokenizer)
        return data

    assert_same(train_batches(module(source)), train_batches(module(preprocessed)))  # pixels bit for bit


@pytest.mark.parametrize("resampled", [False, True], ids=["dealt", "resampled"])
def test_streamed_preprocessed_shards_give_the_json_batches(source, preprocessed, tokenizer, resampled) -> None:
    names = sorted(path.name for path in preprocessed.glob("*.tar"))
    url = f"pipe:cat {preprocessed}/{names[0][:-10]}{{000000..{len(names) - 1:06d}}}.tar"  # no manifest

    def module(train):
        data = WdsDataModule(train, str(source.parent), micro_batch_size=4, num_workers=0, seed=3,
                             samples_per_epoch=24, shuffle_buffer=8, resampled=resampled, shard_size=SHARD_SIZE)
        connect(data, tokenizer)
        return data

    from_json = train_batches(module(str(source)))
    assert_same(from_json, train_batches(module(str(preprocessed))))
    assert_same(from_json, train_batches(module(url)))


def test_preprocessed_shards_refuse_another_image_transform(source, preprocessed, tokenizer) -> None:
    larger = LlavaDataModule(str(preprocessed), None, micro_batch_size=4, num_workers=0)
    connect(larger, tokenizer, size=24)
    with pytest.raises(ValueError, match=rf"{preprocessed} holds images pre-processed for .*differ in size, resize, "
                                         "crop"):
        larger.setup("fit")
    stretched = LlavaDataModule(str(preprocessed), None, micro_batch_size=4, num_workers=0, image_aspect="resize")
    connect(stretched, tokenizer)
    with pytest.raises(ValueError, match="differ in aspect, fill"):
        stretched.setup("fit")

    streamed = WdsDataModule(str(preprocessed), None, micro_batch_size=4, num_workers=0, samples_per_epoch=8)
    connect(streamed, tokenizer, size=24)
    with pytest.raises(ValueError, match=rf"{preprocessed} holds images pre-processed for .*differ in size"):
        train_batches(streamed)
    url = str(sorted(preprocessed.glob("*.tar"))[0])  # a shard without its manifest: each sample says
    streamed = WdsDataModule(url, None, micro_batch_size=4, num_workers=0, samples_per_epoch=8)
    connect(streamed, tokenizer, size=24)
    with pytest.raises(ValueError, match=rf"{url} holds images pre-processed for .*differ in size"):
        train_batches(streamed)



def test_shards_preprocessed_for_crop_serve_a_crop_stage(source, preprocessed, tokenizer, tmp_path) -> None:
    """LLaVA-1.5's align stage crops: shards converted with image_aspect=crop give it the JSON's batches, and the
    padded shards are refused."""
    cropped = tmp_path / "cropped"
    convert(source, source.parent, cropped, shard_size=SHARD_SIZE, progress=False,
            transform=ImageTransform(processor(), "crop"))
    assert json.loads((cropped / "manifest.json").read_text())["preprocessing"] == {
        "size": [16, 16], "aspect": "crop", "fill": None, "resize": {"shortest_edge": 16}, "resample": "bicubic",
        "crop": [16, 16]}

    def module(train, aspect="crop"):
        data = LlavaDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=7,
                               image_aspect=aspect)
        connect(data, tokenizer)
        return data

    from_json = train_batches(module(source))
    assert_same(from_json, train_batches(module(cropped)))  # pixels bit for bit
    padded = train_batches(module(source, "pad"))
    assert not torch.equal(from_json[0]["pixel_values"], padded[0]["pixel_values"])  # the images are not square
    with pytest.raises(ValueError, match="differ in aspect, fill"):
        module(preprocessed).setup("fit")
