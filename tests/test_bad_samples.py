"""Bad samples, every reason: ``on_bad_sample=error`` stops naming the file, the sample and the problem;
``skip`` leaves the sample out, counts it by reason, and never moves another sample's tokens or labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llava_pl.callbacks.samples import pick_samples
from llava_pl.data.bad_samples import REASONS, DropBadSamples
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.conversation import SampleError
from llava_pl.data.datamodule import LlavaDataModule
from llava_pl.data.templates import PlainTemplate
from llava_pl.data.wds import WdsDataModule
from llava_pl.train import run
from tests.data_helpers import connect, draw_image, mixed_records, record, write_dataset

GOOD = mixed_records(8)
CAPTIONS = [record(f"c{i}", ["<image>\nDescribe the image.", f"caption {i}."], f"img/{i:04d}.png") for i in range(8)]


def _good(reason: str) -> list:
    return CAPTIONS if reason == "template" else GOOD  # the plain template takes caption pairs only


def _bad_case(reason: str, folder: Path) -> tuple[list, str, str]:
    """Records with one bad sample ``bad-1`` among good ones, the file name, and the expected message part."""
    records = [dict(entry) for entry in _good(reason)]
    name = "data.json"
    bad = {
        "missing_image": record("bad-1", ["<image>\nq?", "a."], "img/gone.png"),
        "unreadable_image": record("bad-1", ["<image>\nq?", "a."], "img/folder.png"),
        "corrupt_image": record("bad-1", ["<image>\nq?", "a."], "img/corrupt.png"),
        "roles": record("bad-1", ["q?", "a.", "and?"]) | {"conversations": [
            {"from": "human", "value": "q?"}, {"from": "human", "value": "again?"}, {"from": "gpt", "value": "a."}]},
        "image_count": record("bad-1", ["<image>\n<image>\nq?", "a."], "img/0000.png"),
        "empty_turn": record("bad-1", ["<image>\nq?", "  "], "img/0000.png"),
        "too_long": record("bad-1", ["<image>\n" + "a long question " * 12 + "\n<image>", "a."])
        | {"image": ["img/0000.png", "img/0001.png"]},  # the second image would be cut
        "template": record("bad-1", ["<image>\nq?", "a.", "more?", "b."], "img/0000.png"),
        "malformed": record("bad-1", ["<image>\nq?", "a."], "img/0000.png") | {"conversations": "q? a."},
    }[reason]
    records.insert(3, bad)
    problem = {
        "missing_image": "image file not found: .*gone.png", "unreadable_image": "image file unreadable: .*folder.png",
        "corrupt_image": "image does not decode: .*corrupt.png", "roles": "turn 1 is from user, expected assistant",
        "image_count": "2 <image> placeholder\\(s\\) but 1 image", "empty_turn": "the assistant turn is empty",
        "too_long": "does not fit max_length=60 without cutting image 2 of 2", "template": "plain template",
        "malformed": "no 'conversations' list",
    }[reason]
    write_dataset(folder, records)
    if reason == "missing_image":
        (folder / "img" / "gone.png").unlink()
    if reason == "unreadable_image":
        (folder / "img" / "folder.png").unlink()
        (folder / "img" / "folder.png").mkdir()
    if reason == "corrupt_image":
        (folder / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    return records, name, problem


def _module(folder: Path, tokenizer, policy: str, reason: str, **kwargs) -> LlavaDataModule:
    data = LlavaDataModule(str(folder / "data.json"), str(folder), micro_batch_size=3, num_workers=0,
                           on_bad_sample=policy, max_length=60, **kwargs)
    connect(data, tokenizer, template=PlainTemplate() if reason == "template" else None)
    return data


def _by_id(batches: list[dict]) -> dict[str, tuple]:
    rows = {}
    for batch in batches:
        for row, sample_id in enumerate(batch["sample_ids"]):
            keep = batch["attention_mask"][row].bool()
            rows.setdefault(sample_id, []).append((batch["input_ids"][row][keep].tolist(),
                                                   batch["labels"][row][keep].tolist()))
    return rows


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_every_bad_sample_reason_stops_or_is_skipped(reason, tmp_path, tokenizer) -> None:
    folder = tmp_path / "data"
    _, name, problem = _bad_case(reason, folder)
    source = folder / name
    error_data = _module(folder, tokenizer, "error", reason)
    with pytest.raises(SampleError, match=f"{source}: sample bad-1: .*{problem}") as raised:
        error_data.setup("fit")
        for _ in error_data.train_dataloader():  # a sample that fails only when read fails here
            pass
    assert raised.value.reason == reason

    data = _module(folder, tokenizer, "skip", reason)
    data.setup("fit")
    batches = list(data.train_dataloader())
    found_before = data.bad_samples.as_dict()
    found_loading = [entry for batch in batches for entry in batch.get("bad_samples", [])]
    assert found_before.get(reason, 0) + sum(entry[1] == reason for entry in found_loading) == 1
    assert all("bad-1" not in batch["sample_ids"] for batch in batches)
    # the good samples are exactly what they are without the bad one among them
    clean = tmp_path / "clean"
    write_dataset(clean, _good(reason))
    reference = _module(clean, tokenizer, "error", reason)
    reference.setup("fit")
    expected = _by_id([reference.collator([reference.train_set[i]]) for i in range(8)])  # ids repeat
    for sample_id, rows in _by_id(batches).items():
        assert all(row in expected[sample_id] for row in rows), sample_id
    # found before training: never drawn; found while loading: its place in the batch stays empty
    sampled = len(data.train_set.epoch_indices)
    assert sampled == 8 + (0 if found_before else 1)
    assert sum(len(batch["sample_ids"]) for batch in batches) == sampled // 3 * 3 - len(found_loading)


def test_malformed_json_lines_and_whole_files(tmp_path, tokenizer) -> None:
    lines = [json.dumps(entry) for entry in GOOD[:3]]
    lines.insert(1, '{"id": "broken", "conversations": [')
    for entry in GOOD[:3]:
        if "image" in entry:
            draw_image(tmp_path / entry["image"], 0)
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    data = LlavaDataModule(str(tmp_path / "data.jsonl"), str(tmp_path), micro_batch_size=1, num_workers=0,
                           on_bad_sample="skip")
    connect(data, tokenizer)
    data.setup("fit")
    assert data.bad_samples.as_dict() == {"malformed": 1} and "line 2" in data.bad_samples.summary()
    assert len(list(data.train_dataloader())) == 3
    (tmp_path / "whole.json").write_text("[{")
    whole = LlavaDataModule(str(tmp_path / "whole.json"), str(tmp_path), on_bad_sample="skip", num_workers=0)
    connect(whole, tokenizer)
    with pytest.raises(ValueError, match="whole.json: not valid JSON"):
        whole.setup("fit")


def test_a_missing_image_folder_is_named_up_front_and_a_missing_file_with_its_folder(tmp_path, tokenizer) -> None:
    folder = tmp_path / "data"
    write_dataset(folder, GOOD)
    wrong = tmp_path / "no-such-folder"
    data = LlavaDataModule(str(folder / "data.json"), str(wrong), micro_batch_size=3, num_workers=0)
    connect(data, tokenizer)
    with pytest.raises(FileNotFoundError, match=f"image folder not found: {wrong} \\(the folder the image paths of "
                                                f"{folder / 'data.json'} are relative to\\)"):
        data.setup("fit")
    (folder / GOOD[0]["image"]).unlink()
    data = _module(folder, tokenizer, "error", "missing_image")
    with pytest.raises(SampleError, match=f"sample {GOOD[0]['id']}: image file not found: {GOOD[0]['image']} in "
                                          f"image folder {folder}$"):
        data.setup("fit")


def test_a_micro_batch_of_only_bad_samples_still_steps() -> None:
    collate = DropBadSamples(LlavaCollator(pad_token_id=0), pad_token_id=0)
    batch = collate([{"id": "x", "bad": ("corrupt_image", "m"), "source": "s"}])
    assert batch["input_ids"].tolist() == [[0]] and batch["labels"].tolist() == [[-100]]
    assert batch["bad_samples"] == [("x", "corrupt_image", "m")] and batch["pixel_values"].shape[0] == 0


def test_stream_skips_bad_samples_and_keeps_batches_full(tmp_path, tokenizer) -> None:
    records = [dict(entry) for entry in GOOD] * 2
    records[2] = record("bad-1", ["<image>\nq?", "a."], "img/corrupt.png")
    write_dataset(tmp_path, records)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"not an image")
    data = WdsDataModule(str(tmp_path / "data.json"), str(tmp_path), micro_batch_size=3, num_workers=0,
                         samples_per_epoch=15, shuffle_buffer=1, resampled=False, on_bad_sample="skip")
    connect(data, tokenizer)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 5 and all(len(batch["sample_ids"]) == 3 for batch in batches)
    dropped = [entry for batch in batches for entry in batch.get("bad_samples", [])]
    assert dropped and {entry[1] for entry in dropped} == {"corrupt_image"}
    error = WdsDataModule(str(tmp_path / "data.json"), str(tmp_path), micro_batch_size=3, num_workers=0,
                          samples_per_epoch=15, shuffle_buffer=1, resampled=False, on_bad_sample="error")
    connect(error, tokenizer)
    error.setup("fit")
    with pytest.raises(SampleError, match="sample bad-1: image does not decode"):
        list(error.train_dataloader())


def test_a_skipped_sample_is_never_a_generation_prompt(tmp_path, tokenizer) -> None:
    folder = tmp_path / "data"
    _bad_case("too_long", folder)  # its images exist and it parses: only its length makes it bad
    data = _module(folder, tokenizer, "skip", "too_long")
    data.setup("fit")
    assert data.bad_samples.as_dict() == {"too_long": 1}
    picked = [sample.sample_id for sample in pick_samples(data.train_set, count=len(data.train_set))]
    assert "bad-1" not in picked and len(picked) == len(data.train_set) - 1


@pytest.mark.slow
def test_every_skipped_sample_reaches_the_logs_in_a_run_shorter_than_a_logging_interval(compose_config,
                                                                                        tmp_path) -> None:
    folder = tmp_path / "data"
    records = [record("long-1", ["<image>\n" + "a long question " * 200, "a."], "img/long.png"),
               *mixed_records(7), record("corrupt-1", ["<image>\nWhat is it?", "A shape."], "img/corrupt.png")]
    path = write_dataset(folder, records)
    (folder / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    # 8 records drawn per epoch (the too-long one never): one optimizer step each, the corrupt image met every time
    cfg = compose_config("stage=finetune", "tasks=[]", "report=none", "data=llava", "data.on_bad_sample=skip",
                         f"data.image_folder={folder}", f"data.sets.finetune.train={path}",
                         "stage.finetune.max_length=256", "stage.finetune.micro_batch_size=4",
                         "stage.finetune.global_batch_size=8", "stage.finetune.epochs=3", "stage.finetune.max_steps=3",
                         "trainer.log_every_n_steps=50", "monitor.samples.num_samples=9",
                         "monitor.samples.max_new_tokens=2", shapes=False)
    run(cfg)
    logs = Path(cfg.run_dir) / "logs" / "finetune"
    with (logs / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("data/bad_samples/too_long")]
    assert len(rows) == 1 and rows[0]["step"] == "3"  # logged once, at the end of the stage
    assert float(rows[0]["data/bad_samples/too_long"]) == 1 and float(rows[0]["data/bad_samples/corrupt_image"]) == 3
    with (logs / "samples.csv").open() as file:
        prompted = {row["id"] for row in csv.DictReader(file)}
    assert prompted and not prompted & {"long-1", "corrupt-1"}
