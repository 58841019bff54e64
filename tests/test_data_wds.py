"""Webdataset shards: the converter (manifest, resume, bad-sample report) and the loaders that read shards, by
position or streamed, giving the same batches as the JSON they came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.images import ImageTransform
from llava_pl.data.conversation import SampleError
from llava_pl.data.records import ShardRecords, decode_pixels
from llava_pl.data.to_wds import convert, main
from llava_pl.data.wds import WdsDataModule
from tests.data_helpers import connect, mixed_records, processor, transform, write_dataset

SHARD_SIZE = 10


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("json")
    return write_dataset(folder, mixed_records(36))


@pytest.fixture(scope="module")
def shards(source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False)
    return out


def _batches(module, count: int | None = None) -> list[dict]:
    module.setup("fit")
    batches = []
    for batch in module.train_dataloader():
        batches.append(batch)
        if count is not None and len(batches) == count:
            break
    return batches


def _assert_same(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right) > 0
    for a, b in zip(left, right):
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("input_ids", "labels", "attention_mask", "pixel_values", "images_per_sample"):
            assert torch.equal(a[key], b[key]), key


def test_converter_writes_manifest_keeps_text_only_and_reports_bad(tmp_path, capsys) -> None:
    records = mixed_records(12)
    records.insert(3, {"id": "lost", "image": "img/none.png",
                       "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})
    source = write_dataset(tmp_path / "json", records)
    (tmp_path / "json" / "img" / "none.png").unlink()
    (tmp_path / "json" / "img" / "0000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt bytes
    assert main([f"in={source}", f"images={source.parent}", f"out={tmp_path / 'out'}", "shard_size=5",
                 "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "11 of 13 records in 3 shard(s)" in printed and "missing_image" in printed and "corrupt_image" in printed

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["samples"] == 11 and manifest["records"] == 13
    assert [shard["samples"] for shard in manifest["shards"]] == [3, 5, 3]
    assert manifest["bad_samples"] == {"missing_image": 1, "corrupt_image": 1}
    import hashlib
    assert manifest["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    shards = ShardRecords(tmp_path / "out")
    kept = [entry for entry in records if entry["id"] != "lost"][1:]
    assert [shards.record(i) for i in range(len(shards))] == kept  # the records as they were, in order
    text_only = [i for i in range(len(shards)) if "image" not in shards.record(i)]
    assert text_only and all(list(shards.entry(i)[2]) == ["json"] for i in text_only)


def test_converter_fails_when_no_record_converts(tmp_path, capsys) -> None:
    source = write_dataset(tmp_path / "json", [entry for entry in mixed_records(8) if "image" in entry])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as stopped:  # a folder without the images: every record is bad
        main([f"in={source}", f"images={empty}", f"out={tmp_path / 'out'}", "progress=false"])
    captured = capsys.readouterr()
    assert stopped.value.code == 1 and "0 of 6 records" in captured.out and "missing_image     6" in captured.out
    assert captured.err == f"error: no record of {source} converted (6 records): check images= and the bad " \
                           "samples above\n"
    with pytest.raises(SystemExit) as stopped:  # a folder that does not exist: named before anything is written
        main([f"in={source}", f"images={tmp_path / 'nowhere'}", f"out={tmp_path / 'out2'}", "progress=false"])
    assert stopped.value.code == 1 and not (tmp_path / "out2").exists()
    assert capsys.readouterr().err.startswith(f"error: image folder not found: {tmp_path / 'nowhere'} ")


def test_converter_resumes_where_it_stopped(source: Path, tmp_path) -> None:
    out = tmp_path / "out"
    convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    first = out / manifest["shards"][0]["name"]
    before = first.stat().st_mtime_ns
    # an interruption while the last shard was written: the manifest does not list it yet
    last = manifest["shards"].pop()
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / last["name"]).rename(out / (last["name"] + ".partial"))
    again = convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False)
    assert again["complete"] and [s["name"] for s in again["shards"]] == sorted(s["name"] for s in again["shards"])
    assert len(again["shards"]) == 4 and (out / last["name"]).is_file()
    assert first.stat().st_mtime_ns == before  # finished shards are kept
    with pytest.raises(ValueError, match="holds shards of another conversion"):
        convert(source, source.parent, out, shard_size=SHARD_SIZE + 1, progress=False)


@pytest.mark.parametrize("group_by_length", [False, True], ids=["shuffled", "grouped"])
def test_shards_and_json_give_the_same_batches(source, shards, tokenizer, tmp_path, group_by_length) -> None:
    def module(train):
        data = LlavaDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=7,
                               group_by_length=group_by_length, length_cache=str(tmp_path / "cache"))
        connect(data, tokenizer)
        return data

    from_json, from_shards = _batches(module(source)), _batches(module(shards))
    _assert_same(from_json, from_shards)
    other = LlavaDataModule(str(shards), None, micro_batch_size=4, num_workers=0, seed=8,
                            group_by_length=group_by_length)
    connect(other, tokenizer)
    assert [b["sample_ids"] for b in _batches(other)] != [b["sample_ids"] for b in from_shards]


@pytest.mark.parametrize("resampled", [False, True], ids=["dealt", "resampled"])
def test_streams_of_shards_and_json_give_the_same_batches(source, shards, tokenizer, resampled) -> None:
    def module(train, seed=3):
        data = WdsDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=seed,
                             samples_per_epoch=24, shuffle_buffer=8, resampled=resampled, shard_size=SHARD_SIZE)
        connect(data, tokenizer)
        return data

    from_shards = _batches(module(shards))
    assert len(from_shards) == 6  # samples_per_epoch / micro_batch_size, whatever the data holds
    _assert_same(_batches(module(source)), from_shards)
    assert [b["sample_ids"] for b in _batches(module(shards, seed=4))] != [b["sample_ids"] for b in from_shards]


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
    streamed = [s for batch in _batches(stream) for s in batch["sources"]]
    assert len(streamed) == 400 and 0.2 < streamed.count("chat") / streamed.count("mix") < 0.45  # 12 : 36


def test_shards_read_by_loader_workers_match_the_main_process(shards, tokenizer) -> None:
    def module(workers):
        data = LlavaDataModule(str(shards), None, micro_batch_size=4, num_workers=workers, seed=2)
        connect(data, tokenizer)
        return data

    alone = module(0)
    batches = _batches(alone)
    forked = module(2)
    forked.setup("fit")
    forked.train_set[0]  # files opened here before the workers fork must not be shared with them
    _assert_same([batch for batch in forked.train_dataloader()], batches)


# images pre-processed at conversion (to_wds vision=...): the readers only normalise them


@pytest.fixture(scope="module")
def preprocessed(source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preprocessed")
    convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False, transform=transform())
    return out


def test_converter_stores_preprocessed_pixels(shards, preprocessed) -> None:
    manifest = json.loads((preprocessed / "manifest.json").read_text())
    made_for = {"size": [16, 16], "aspect": "pad", "fill": [122, 116, 104], "resize": {"shortest_edge": 16},
                "resample": "bicubic", "crop": [16, 16]}
    assert manifest["preprocessing"] == made_for
    shards, images = ShardRecords(preprocessed), ShardRecords(shards)
    assert [shards.record(i) for i in range(len(shards))] == [images.record(i) for i in range(len(images))]
    with_image = [i for i in range(len(shards)) if "image" in shards.record(i)]
    assert with_image and all(sorted(shards.entry(i)[2]) == ["img0.npy", "json", "preprocessing.json"]
                              for i in with_image)
    pixels = shards.open_pixels(with_image[0], "s0", 0)
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    relative = shards.record(with_image[0])["image"]
    with images.open_image(with_image[0], "s0", 0, relative) as image:
        assert np.array_equal(pixels, transform().pixels(image))
    with pytest.raises(SampleError, match="pixels do not load") as error:
        decode_pixels(b"not an array", "shards", "s0", "shard.tar:000000001.img0.npy")
    assert error.value.reason == "corrupt_image"


@pytest.mark.parametrize("group_by_length", [False, True], ids=["shuffled", "grouped"])
def test_preprocessed_shards_give_the_json_batches(source, preprocessed, tokenizer, tmp_path,
                                                   group_by_length) -> None:
    def module(train):
        data = LlavaDataModule(str(train), str(source.parent), micro_batch_size=4, num_workers=0, seed=7,
                               group_by_length=group_by_length, length_cache=str(tmp_path / "cache"))
        connect(data, tokenizer)
        return data

    _assert_same(_batches(module(source)), _batches(module(preprocessed)))  # pixels bit for bit


@pytest.mark.parametrize("resampled", [False, True], ids=["dealt", "resampled"])
def test_streamed_preprocessed_shards_give_the_json_batches(source, preprocessed, tokenizer, resampled) -> None:
    names = sorted(path.name for path in preprocessed.glob("*.tar"))
    url = f"pipe:cat {preprocessed}/{names[0][:-10]}{{000000..{len(names) - 1:06d}}}.tar"  # no manifest

    def module(train):
        data = WdsDataModule(train, str(source.parent), micro_batch_size=4, num_workers=0, seed=3,
                             samples_per_epoch=24, shuffle_buffer=8, resampled=resampled, shard_size=SHARD_SIZE)
        connect(data, tokenizer)
        return data

    from_json = _batches(module(str(source)))
    _assert_same(from_json, _batches(module(str(preprocessed))))
    _assert_same(from_json, _batches(module(url)))


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
        _batches(streamed)
    url = str(sorted(preprocessed.glob("*.tar"))[0])  # a shard without its manifest: each sample says
    streamed = WdsDataModule(url, None, micro_batch_size=4, num_workers=0, samples_per_epoch=8)
    connect(streamed, tokenizer, size=24)
    with pytest.raises(ValueError, match=rf"{url} holds images pre-processed for .*differ in size"):
        _batches(streamed)



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

    from_json = _batches(module(source))
    _assert_same(from_json, _batches(module(cropped)))  # pixels bit for bit
    padded = _batches(module(source, "pad"))
    assert not torch.equal(from_json[0]["pixel_values"], padded[0]["pixel_values"])  # the images are not square
    with pytest.raises(ValueError, match="differ in aspect, fill"):
        module(preprocessed).setup("fit")


def test_preprocessing_conversion_resumes_and_refuses_other_settings(source, tmp_path) -> None:
    out = tmp_path / "out"
    convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False, transform=transform())
    manifest = json.loads((out / "manifest.json").read_text())
    last = manifest["shards"].pop()
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / last["name"]).unlink()
    again = convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False, transform=transform())
    assert again["complete"] and len(again["shards"]) == 4 and again["preprocessing"] == manifest["preprocessing"]
    assert (out / last["name"]).is_file()
    for other in (None, transform(24)):
        with pytest.raises(ValueError, match="holds shards of another conversion"):
            convert(source, source.parent, out, shard_size=SHARD_SIZE, progress=False, transform=other)


def test_converter_command_line_takes_a_vision_preset(source, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([f"in={source}", f"images={source.parent}", f"out={out}", "vision=tiny_clip", "image_aspect=resize",
                 "model.vision.image_processor.size.shortest_edge=112", "progress=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"] == {"size": [96, 96], "aspect": "resize", "fill": None,
                                         "resize": {"shortest_edge": 112}, "resample": "bicubic", "crop": [96, 96]}
    assert "images pre-processed for" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([f"in={source}", f"out={tmp_path / 'x'}", "vision=no-such-preset"])
    assert stopped.value.code == 1
    assert "error: no vision preset 'no-such-preset'" in capsys.readouterr().err

    class Shifted(CLIPImageProcessor):  # a processor llava_pl does not reproduce: no pixels can be computed ahead
        def __call__(self, *args, **kwargs):
            result = super().__call__(*args, **kwargs)
            result["pixel_values"] = result["pixel_values"] + 1
            return result

    shifted = ImageTransform(Shifted(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}))
    with pytest.raises(ValueError, match="does not reproduce .*; convert without vision="):
        convert(source, source.parent, tmp_path / "y", progress=False, transform=shifted)
