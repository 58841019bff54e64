"""Evaluation inside training: tasks every n steps (eval.tasks, eval.every_n_steps), the demo's end-of-training
shapes evaluation through the same runner, and ScienceQA files used both to finetune and to evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from llava_pl.checkpoint import load_for_inference
from llava_pl.eval.callback import EvalDuringTraining, eval_callbacks
from llava_pl.eval.predictions import PREDICTIONS_FILE, PredictionLog
from llava_pl.eval.runner import Runner
from llava_pl.eval.shapes import per_type
from llava_pl.eval.task_config import instantiate_tasks, load_task_configs
from llava_pl.eval.tasks.shapes import BLANK_SUFFIX, ShapesTask
from llava_pl.train import run
from tests.eval_benchmarks import write_benchmarks

TINY_FINETUNE = ["stage=finetune", "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=4",
                 "stage.finetune.max_length=256"]


def _eval_rows(metrics_csv: Path) -> list[dict[str, str]]:
    with metrics_csv.open() as file:
        return [row for row in csv.DictReader(file) if any(key.startswith("eval/") and value
                                                           for key, value in row.items())]


def test_eval_tasks_are_loaded_by_name_from_the_task_group(compose_config, data_dir, tmp_path) -> None:
    cfg = compose_config("eval.tasks=[shapes,pope]", "eval.every_n_steps=5", f"paths.eval_data={tmp_path}")
    configs = load_task_configs(cfg.eval.tasks, cfg)
    assert configs.pope.questions == f"{tmp_path}/pope/llava_pope_test.jsonl"  # interpolated from the run's paths
    assert configs.shapes.questions == f"{data_dir}/shapes/questions_test.jsonl"
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    callbacks = eval_callbacks(cfg, tokenizer, instantiate(cfg.model.llm.template), None, tmp_path)
    assert len(callbacks) == 1 and isinstance(callbacks[0], EvalDuringTraining)
    assert list(callbacks[0].tasks) == ["shapes", "pope"] and callbacks[0].limit == 200
    assert eval_callbacks(compose_config(), tokenizer, None, None, tmp_path) == []  # off by default
    with pytest.raises(ValueError, match=r"eval.tasks: no task 'popee'"):
        load_task_configs(["popee"], cfg)


@pytest.mark.slow
def test_tasks_run_every_n_steps_and_the_demo_evaluation_uses_the_runner(compose_config, tmp_path) -> None:
    benchmarks = write_benchmarks(tmp_path / "eval_data")
    cfg = compose_config(*TINY_FINETUNE, "stage.finetune.max_steps=4", "eval.tasks=[shapes,pope]",
                         "eval.every_n_steps=2", "eval.limit=4", "eval.batch_size=4",
                         f"paths.eval_data={benchmarks}", "evaluation.limit=6", "evaluation.max_new_tokens=4")
    results = run(cfg)
    run_dir = Path(cfg.run_dir)

    rows = _eval_rows(run_dir / "logs" / "finetune" / "metrics.csv")
    assert [int(row["step"]) for row in rows] == [2, 4]
    for row in rows:
        assert row["eval/pope/f1"] != "" and any(key.startswith("eval/shapes/") and key.endswith("/accuracy")
                                                  and row[key] != "" for key in row)
    for step in (2, 4):
        shapes_rows = PredictionLog(run_dir / "finetune" / "eval" / f"step_{step}" / "shapes" / PREDICTIONS_FILE).rows()
        assert len(shapes_rows) == 8  # 4 questions, each also about a blank image
        assert sum(row["key"].endswith(BLANK_SUFFIX) for row in shapes_rows) == 4
        pope_rows = PredictionLog(run_dir / "finetune" / "eval" / f"step_{step}" / "pope" / PREDICTIONS_FILE).rows()
        assert len(pope_rows) == 4

    # the end-of-training table is the shapes task's score of the runner's predictions file
    task = ShapesTask(cfg.evaluation.questions, cfg.evaluation.image_folder, max_new_tokens=4)
    answered = {row["key"]: row["text"] for row in PredictionLog(run_dir / "shapes" / PREDICTIONS_FILE).rows()}
    assert len(answered) == 12
    expected = per_type(task.score(task.subset(task.samples(), 6), answered))
    assert json.loads((run_dir / "shapes_eval.json").read_text()) == expected == results
    legacy = [json.loads(line) for line in (run_dir / "shapes_predictions.jsonl").read_text().splitlines()]
    assert len(legacy) == 6
    for record in legacy:
        assert record["prediction"] == answered[record["question_id"]]
        assert record["blank_prediction"] == answered[record["question_id"] + BLANK_SUFFIX]


@pytest.mark.slow
def test_scienceqa_files_finetune_then_evaluate(compose_config, tmp_path) -> None:
    """data=scienceqa converts problems.json + pid_splits.json for training; the trained checkpoint then
    answers the test split of the same files through the scienceqa_img task."""
    benchmarks = write_benchmarks(tmp_path / "eval_data")
    scienceqa = benchmarks / "scienceqa"
    cfg = compose_config("data=scienceqa", f"data.root={scienceqa}", "data.prepare.0.splits=[train]",
                         "data.sets.finetune.val=null", *TINY_FINETUNE, "stage.finetune.micro_batch_size=1",
                         "stage.finetune.global_batch_size=1", "stage.finetune.max_steps=2", "evaluation=none",
                         shapes=False)
    run(cfg)
    converted = json.loads(Path(cfg.data.sets.finetune.train).read_text())
    assert [record["id"] for record in converted] == ["4"] and converted[0]["image"] == "train/4/image.png"

    loaded = load_for_inference(Path(cfg.run_dir) / "finetune" / "checkpoints" / "last.ckpt")
    task_cfg = load_task_configs(["scienceqa_img"], compose_config(f"paths.eval_data={benchmarks}"))
    task = instantiate_tasks(task_cfg)["scienceqa_img"]
    task.max_new_tokens = 4
    runner = Runner(loaded.model, loaded.tokenizer, loaded.template, loaded.image_transform, batch_size=3)
    result = runner.run("scienceqa_img", task, tmp_path / "eval")
    assert set(result.answers) == {"1", "2", "3"}
    assert result.metrics["n"] == 3 and result.metrics["n_img"] == 2
