"""Webdataset shards, the converter (`python -m llava_pl.to_wds`): the manifest, text-only records, the
bad-sample report, resuming, and images pre-processed at conversion (``vision=...``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPImageProcessor

from llava_pl.data.conversation import SampleError
from llava_pl.data.images import ImageTransform
from llava_pl.data.records import ShardRecords, decode_pixels
from llava_pl.to_wds import convert, main
from tests.data_helpers import mixed_records, transform, write_dataset
from tests.wds_helpers import SHARD_SIZE, json_source, shard_folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return json_source(tmp_path_factory.mktemp("json"))


@pytest.fixture(scope="module")
def shards(source: Path, tmp_path_factory) -> Path:
    return shard_folder(source, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def preprocessed(source: Path, tmp_path_factory) -> Path:
    return shard_folder(source, tmp_path_factory.mktemp("preprocessed"), transform())


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
