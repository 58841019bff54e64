"""Same seed, config and data ⇒ the same per-step losses on CPU; the run folder records what the run was made of."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from llava_pl.provenance import RUN_INFO, _differences
from llava_pl.train import run

COMMON = [
    "stage=finetune", "tasks=[]", "stage.finetune.max_steps=5", "stage.finetune.micro_batch_size=4",
    "stage.finetune.global_batch_size=8", "checkpoint.every_n_train_steps=0",
]


def _losses(run_dir: Path) -> list[float]:
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.slow
def test_same_seed_same_losses_other_seed_other_losses(compose_config, tmp_path) -> None:
    for name, seed in (("first", 42), ("second", 42), ("other_seed", 7)):
        run(compose_config(*COMMON, f"seed={seed}", f"run_dir={tmp_path / name}"))
    first = _losses(tmp_path / "first")
    assert len(first) == 5
    assert _losses(tmp_path / "second") == first  # bit for bit
    assert _losses(tmp_path / "other_seed") != first  # the seed does reach the model and the data order


def test_run_folder_records_config_versions_commit_and_data_hashes(compose_config, tmp_path) -> None:
    cfg = compose_config(*COMMON, "stage.finetune.max_steps=1")
    run(cfg)
    run(compose_config(*COMMON, "stage.finetune.max_steps=1", "ckpt_path=last"))  # a resume is a second launch
    run_dir = Path(cfg.run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["stage"]["finetune"]["max_steps"] == 1 and "${" not in json.dumps(config)  # resolved
    launches = json.loads((run_dir / RUN_INFO).read_text())["launches"]
    assert [launch["ckpt_path"] for launch in launches] == [None, "last"]
    record = launches[0]
    import lightning
    import torch

    assert record["packages"]["torch"] == torch.__version__ and record["packages"]["lightning"] == lightning.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert record["git"]["commit"] == head.stdout.strip() if head.returncode == 0 else record["git"] is None
    data_files = {cfg.data.sets.finetune.train, cfg.data.sets.finetune.val, cfg.data.sets.align.train}
    for path in data_files:
        assert record["data"][path] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    changed_data = {**record, "data": {**record["data"], cfg.data.sets.finetune.train: "0" * 64}}
    assert _differences(record, changed_data) == [f"data file {cfg.data.sets.finetune.train}"]  # warned on resume
