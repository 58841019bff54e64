"""Real training on the small demo data: the loss goes down, the pipeline runs end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava_pl.demo.table import per_type
from llava_pl.train import run
from tests.conftest import CONF_DIR, small_overrides


def _losses(metrics_csv: Path) -> list[float]:
    with metrics_csv.open() as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.slow
def test_finetune_lowers_the_loss(compose_config, tmp_path) -> None:
    cfg = compose_config(
        "stage=finetune", "tasks=[]", "stage.finetune.max_steps=30", "stage.finetune.epochs=30",
        "stage.finetune.micro_batch_size=8", "stage.finetune.global_batch_size=8", "stage.finetune.warmup_ratio=0.1",
    )
    run(cfg)
    losses = _losses(Path(cfg.run_dir) / "logs" / "finetune" / "metrics.csv")
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, f"loss did not fall: {first:.3f} → {last:.3f}"
    assert (Path(cfg.run_dir) / "finetune" / "projector.safetensors").is_file()
    assert list((Path(cfg.run_dir) / "finetune" / "checkpoints").glob("last*.ckpt"))


@pytest.mark.slow
def test_train_py_runs_align_then_finetune_then_evaluates(data_dir, tmp_path) -> None:
    run_dir = tmp_path / "run"
    overrides = [o for o in small_overrides(data_dir, run_dir) if not o.startswith("run_dir=")]
    command = [
        sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}",
        "stage.align.max_steps=3", "stage.finetune.max_steps=3",
        "stage.align.micro_batch_size=8", "stage.align.global_batch_size=16",  # accumulation 2
        "stage.finetune.micro_batch_size=8", "stage.finetune.global_batch_size=8",
    ]
    result = subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "question type" in result.stdout  # the table is printed
    results = per_type(json.loads((run_dir / "eval" / "shapes" / "metrics.json").read_text()))
    assert {"color", "shape"} <= set(results)
    for row in results.values():
        assert set(row) == {"accuracy", "blank_accuracy", "chance", "n", "several_accuracy", "several_n"}
        assert row["n"] > 0
        assert 0 <= row["accuracy"] <= 1 and 0 < row["chance"] <= 1
    assert 0 < results["color"]["several_n"] < results["color"]["n"]  # the demo's images have one to three shapes
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "align" / "projector.safetensors").is_file()
    for stage, aspect in (("align", "crop"), ("finetune", "pad")):  # LLaVA-1.5's, recorded for inference
        checkpoint = torch.load(run_dir / stage / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["hyper_parameters"]["image_aspect"] == aspect
    align_losses = _losses(run_dir / "logs" / "align" / "metrics.csv")
    assert len(align_losses) == 3  # 3 optimizer steps of 2 micro-batches each, logged per step
    with (run_dir / "logs" / "eval" / "metrics.csv").open() as file:
        assert "eval/shapes/color/accuracy" in next(csv.DictReader(file))  # eval/<task>/<metric>
