"""Evaluation inside training: the tasks of tasks=[...] every n steps (eval.every_n_steps) and at the end of the
run (eval.at_end) through the same runner, and ScienceQA files used both to finetune and to evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from llava_pl.checkpoint.load import load_for_inference
from llava_pl.demo.blank_control import BLANK_SUFFIX
from llava_pl.demo.shapes_task import ShapesTask
from llava_pl.eval.callback import EvalDuringTraining, eval_callbacks
from llava_pl.eval.predictions import PREDICTIONS_FILE, PredictionLog
from llava_pl.eval.runner import Runner
from llava_pl.eval.task_config import instantiate_tasks
from llava_pl.train import run
from tests.eval_benchmarks import write_benchmarks

TINY_FINETUNE = ["stage=finetune", "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=4",
                 "stage.finetune.max_length=256"]


def _eval_rows(metrics_csv: Path) -> list[dict[str, str]]:
    with metrics_csv.open() as file:
        return [row for row in csv.DictReader(file) if any(key.startswith("eval/") and value
                                                           for key, value in row.items())]


def test_tasks_are_selected_by_name_from_the_task_group(compose_config, data_dir, tmp_path) -> None:
    cfg = compose_config("tasks=[shapes,pope]", "eval.every_n_steps=5", f"paths.eval_data={tmp_path}")
    assert cfg.tasks.pope.questions == f"{tmp_path}/pope/llava_pope_test.jsonl"  # interpolated from the run's paths
    assert cfg.tasks.shapes.questions == f"{data_dir}/shapes/questions_test.jsonl"
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    callbacks = eval_callbacks(cfg, tokenizer, instantiate(cfg.model.llm.template), None, tmp_path)
    assert len(callbacks) == 1 and isinstance(callbacks[0], EvalDuringTraining)
    assert list(callbacks[0].tasks) == ["shapes", "pope"] and callbacks[0].limit == 200
    demo = compose_config()
    assert list(demo.tasks) == ["shapes"] and demo.eval.at_end  # the demo evaluates at the end of the run...
    assert eval_callbacks(demo, tokenizer, None, None, tmp_path) == []  # ...not during training
    assert "tasks" not in compose_config("tasks=[]") and "tasks" not in compose_config("experiment=none")
    with pytest.raises(Exception, match=r"tasks/popee"):  # Hydra's message lists the options
        compose_config("tasks=[popee]")


@pytest.mark.slow
def test_tasks_run_every_n_steps_and_at_the_end_through_the_runner(compose_config, tmp_path) -> None:
    benchmarks = write_benchmarks(tmp_path / "eval_data")
    cfg = compose_config(*TINY_FINETUNE, "stage.finetune.max_steps=4", "tasks=[shapes,pope]",
                         "eval.every_n_steps=2", "eval.limit=4", "eval.batch_size=4",
                         f"paths.eval_data={benchmarks}", "eval.end_limit=6", "eval.max_new_tokens=4")
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

    # at the end: the same tasks, each scored from the runner's predictions file, written as the CLI writes them
    assert list(results) == ["shapes", "pope"]
    task = ShapesTask(cfg.tasks.shapes.questions, cfg.tasks.shapes.image_folder, max_new_tokens=4)
    end = run_dir / "eval"
    answered = {row["key"]: row["text"] for row in PredictionLog(end / "shapes" / PREDICTIONS_FILE).rows()}
    assert len(answered) == 12
    expected = task.score(task.subset(task.samples(), 6), answered)
    assert json.loads((end / "shapes" / "metrics.json").read_text()) == expected == results["shapes"]
    assert json.loads((end / "metrics.json").read_text()) == results
    assert len(PredictionLog(end / "pope" / PREDICTIONS_FILE).rows()) == 6
    with (run_dir / "logs" / "eval" / "metrics.csv").open() as file:
        logged = next(csv.DictReader(file))
    assert float(logged["eval/shapes/color/accuracy"]) == pytest.approx(results["shapes"]["color/accuracy"])
    legacy = [json.loads(line) for line in (end / "shapes" / "answers.jsonl").read_text().splitlines()]
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
                         "stage.finetune.global_batch_size=1", "stage.finetune.max_steps=2", "tasks=[]",
                         shapes=False)
    run(cfg)
    converted = json.loads(Path(cfg.data.sets.finetune.train).read_text())
    assert [record["id"] for record in converted] == ["4"] and converted[0]["image"] == "train/4/image.png"

    loaded = load_for_inference(Path(cfg.run_dir) / "finetune" / "checkpoints" / "last.ckpt")
    task = instantiate_tasks(compose_config("tasks=[scienceqa_img]", f"paths.eval_data={benchmarks}").tasks)["scienceqa_img"]
    task.max_new_tokens = 4
    runner = Runner(loaded.model, loaded.tokenizer, loaded.template, loaded.image_transform, batch_size=3)
    result = runner.run("scienceqa_img", task, tmp_path / "eval")
    assert set(result.answers) == {"1", "2", "3"}
    assert result.metrics["n"] == 3 and result.metrics["n_img"] == 2
