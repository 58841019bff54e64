"""Training on the new data paths: streamed shards mixed with a JSON source (data=wds), and JSON with length
grouping, both with bad samples skipped; per-source and per-reason counts reach the logs and the summary."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from llava_pl.to_wds import convert
from llava_pl.train import run
from tests.data_helpers import record, write_dataset

COMMON = ["stage=finetune", "tasks=[]", "report=none", "stage.finetune.max_steps=3",
          "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=8", "data.on_bad_sample=skip"]


def _metrics(run_dir: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        for row in csv.DictReader(file):
            last.update({key: float(value) for key, value in row.items() if value and key.startswith("data/")})
    return last


def _chat(folder: Path) -> Path:
    """A small extra source: a text-only chat and a sample whose image bytes are corrupt."""
    path = write_dataset(folder, [record("chat-1", ["Hello?", "Hello, how can I help?"]),
                                  record("corrupt-1", ["<image>\nWhat is it?", "A shape."], "bad.png")], "chat.json")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return path


@pytest.mark.slow
def test_streamed_mixture_trains_and_counts(compose_config, data_dir, tmp_path, caplog) -> None:
    shapes = data_dir / "shapes"
    convert(shapes / "instruct_train.json", shapes / "images", tmp_path / "shards", shard_size=16, progress=False)
    chat = _chat(tmp_path / "chat")
    # the two chat records drawn as often as all the shapes records: both sources, and the corrupt image, are drawn
    weight = len(json.loads((shapes / "instruct_train.json").read_text())) / 2
    sources = (f"[{{path: '{tmp_path / 'shards'}', name: shapes}}, "  # Hydra's override syntax for a list
               f"{{path: '{chat}', image_folder: '{chat.parent}', weight: {weight}, name: chat}}]")
    cfg = compose_config(*COMMON, "data=wds", f"data.sets.finetune.train={sources}",
                         "data.sets.finetune.samples_per_epoch=64", "data.shuffle_buffer=8", shapes=False)
    with caplog.at_level(logging.INFO, logger="llava_pl.data.counts"):
        run(cfg)
    metrics = _metrics(tmp_path / "run")
    assert metrics["data/samples/shapes"] > 0 and metrics["data/samples/chat"] > 0
    assert metrics["data/samples/shapes"] + metrics["data/samples/chat"] <= 3 * 8
    assert metrics["data/bad_samples/corrupt_image"] >= 1
    summary = caplog.text
    assert "data summary:" in summary and "corrupt_image" in summary and "sample corrupt-1" in summary


@pytest.mark.slow
def test_grouped_json_with_bad_samples_trains(compose_config, data_dir, tmp_path) -> None:
    shapes = data_dir / "shapes"
    records = json.loads((shapes / "instruct_train.json").read_text())
    records[5]["conversations"][1]["value"] = ""  # an empty assistant turn
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(records))
    cfg = compose_config(*COMMON, "data=llava", f"data.image_folder={shapes}/images",
                         f"data.sets.finetune.train={path}", "data.sets.finetune.group_by_length=true", shapes=False)
    run(cfg)
    metrics = _metrics(tmp_path / "run")
    assert metrics["data/bad_samples/empty_turn"] == 1 and metrics["data/samples/instruct.json"] == 3 * 8
