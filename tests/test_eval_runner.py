"""The task runner end to end: every task of conf/eval/tasks on a tiny model over benchmark files drawn here,
batched answering, resuming an interrupted run, scoring files without a model, and data-parallel answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from llava_pl.checkpoint.load import LoadedModel, load_for_inference
from llava_pl.eval.predictions import METRICS_FILE, PREDICTIONS_FILE, PredictionLog, rank_file
from llava_pl.eval.runner import Processes, Runner, score_file
from llava_pl.eval.task import Sample, Task
from llava_pl.eval.task_config import instantiate_tasks, task_names
from llava_pl.eval.tasks.vqav2 import UPLOAD_FILE
from llava_pl.evaluate import evaluate
from llava_pl.generate import Answerer
from tests.conftest import CONF_DIR, formats_file
from tests.eval_benchmarks import write_benchmarks

OPTIONS = ["shapes", "color_naming", "scienceqa_img", "pope", "textvqa", "vqav2", "gqa", "mme"]
# the tasks they make: color_naming asks through two probes, each a task
TASKS = ["shapes", "color_naming/caption", "color_naming/question", "scienceqa_img", "pope", "textvqa", "vqav2",
         "gqa", "mme"]


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory) -> Path:
    return write_benchmarks(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def loaded(saved_llava) -> LoadedModel:
    return load_for_inference(saved_llava)


def eval_config(*overrides: str, data_dir: Path, benchmarks: Path, out_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR / "eval"), version_base="1.3"):
        return compose("evaluate", overrides=[f"paths.data_dir={data_dir}", f"paths.eval_data={benchmarks}",
                                              f"out_dir={out_dir}", "accelerator=cpu", *overrides])


def short(tasks: list[str]) -> list[str]:
    """A random model never stops by itself: four new tokens per answer keep the runs short."""
    return [f"tasks.{name.replace('/', '.')}.max_new_tokens=4" for name in tasks]


def test_every_task_option_composes_and_instantiates(data_dir, benchmarks, tmp_path) -> None:
    assert sorted(OPTIONS) == task_names()
    cfg = eval_config(f"tasks=[{','.join(OPTIONS)}]", data_dir=data_dir, benchmarks=benchmarks, out_dir=tmp_path)
    tasks = instantiate_tasks(cfg.tasks)
    assert list(tasks) == TASKS and all(isinstance(task, Task) for task in tasks.values())
    for name, task in tasks.items():  # the YAML paths find the files of LLaVA's eval layout
        samples = task.samples()
        assert samples and all(isinstance(sample, Sample) for sample in samples), name


def test_every_task_runs_end_to_end(saved_llava, loaded, data_dir, benchmarks, tmp_path) -> None:
    """The CLI's code path on a tiny random Llava: each task's predictions file holds one LLaVA-format answer
    line per question in the task's order, its metrics equal scoring that file afresh, and batched answers
    (left padding, KV cache) equal answering each question alone."""
    out = tmp_path / "out"
    cfg = eval_config(f"model={saved_llava}", f"tasks=[{','.join(OPTIONS)}]", "limit=6", "batch_size=4",
                      f"out={tmp_path / 'all.json'}", *short(TASKS), data_dir=data_dir, benchmarks=benchmarks,
                      out_dir=out)
    results = evaluate(cfg)
    assert list(results) == TASKS
    assert json.loads((tmp_path / "all.json").read_text()) == results
    tasks = instantiate_tasks(cfg.tasks)
    for name, task in tasks.items():
        samples = task.subset(task.samples(), 6)
        rows = PredictionLog(out / name / PREDICTIONS_FILE).rows()
        assert [row["key"] for row in rows] == [sample.key for sample in samples], name
        assert all({"question_id", "prompt", "text"} <= set(row) for row in rows)
        assert json.loads((out / name / METRICS_FILE).read_text()) == results[name]
        rescored = task.score(samples, {row["key"]: row["text"] for row in rows})
        assert rescored == results[name]
        if not name.startswith(("shapes", "color_naming")):  # limit=6 covers every question of the others' files
            assert score_file(task, out / name / PREDICTIONS_FILE) == results[name]
        answerer = Answerer(loaded.model, loaded.tokenizer, loaded.template, task.max_new_tokens, batch_size=1)
        for sample, row in zip(samples, rows):
            image = task.image(sample, loaded.image_transform)
            assert answerer([sample.prompt], [image]) == [row["text"]], (name, sample.key)
    assert results["scienceqa_img"]["n"] == 3 and results["scienceqa_img"]["n_img"] == 2  # one text-only question
    assert {row["question_id"] for row in json.loads((out / "vqav2" / UPLOAD_FILE).read_text())} == {11, 12}


class _CountingRunner(Runner):
    """Records which questions it was asked to answer; optionally fails after some batches (an interruption)."""

    def __init__(self, *args, fail_after_batches: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []
        self.fail_after_batches = fail_after_batches

    def answer(self, task, samples, log_file, real=None, synced=False) -> list[dict]:
        self.asked += [sample.key for sample in samples[:real]]
        if self.fail_after_batches is None:
            return super().answer(task, samples, log_file, real, synced)
        super().answer(task, samples[: self.fail_after_batches * self.batch_size], log_file)
        raise KeyboardInterrupt


def _runner(loaded: LoadedModel, **kwargs) -> _CountingRunner:
    return _CountingRunner(loaded.model, loaded.tokenizer, loaded.template, loaded.image_transform, batch_size=2,
                           **kwargs)


def _pope(benchmarks: Path) -> Task:
    cfg = eval_config("tasks=[pope]", "tasks.pope.max_new_tokens=3", data_dir=benchmarks, benchmarks=benchmarks,
                      out_dir=benchmarks)
    return instantiate_tasks(cfg.tasks)["pope"]


def test_interrupted_run_resumes_where_it_stopped(loaded, benchmarks, tmp_path) -> None:
    task = _pope(benchmarks)
    keys = [sample.key for sample in task.samples()]
    with pytest.raises(KeyboardInterrupt):
        _runner(loaded, fail_after_batches=1).run("pope", task, tmp_path)
    predictions = tmp_path / "pope" / PREDICTIONS_FILE
    assert [row["key"] for row in PredictionLog(predictions).rows()] == keys[:2]  # the first batch was kept
    with predictions.open("a") as file:
        file.write('{"question_id": 3, "prompt": "Is th')  # killed in the middle of writing a line

    resumed = _runner(loaded)
    result = resumed.run("pope", task, tmp_path)
    assert resumed.asked == keys[2:]  # only what was missing
    assert [row["key"] for row in PredictionLog(predictions).rows()] == keys
    assert len(result.answers) == len(keys)

    again = _runner(loaded)
    assert again.run("pope", task, tmp_path).metrics == result.metrics
    assert again.asked == []  # a finished run is only rescored


def test_rank_files_of_an_interrupted_parallel_run_are_folded_in(loaded, benchmarks, tmp_path) -> None:
    """Answers that ranks of an interrupted data-parallel run left in their own files count as done."""
    task = _pope(benchmarks)
    samples = task.samples()
    main = tmp_path / "pope" / PREDICTIONS_FILE
    _runner(loaded).answer(task, samples[1::2], PredictionLog(rank_file(main, 1)))
    runner = _runner(loaded)
    runner.run("pope", task, tmp_path, processes=Processes(rank=0, world_size=1))
    assert runner.asked == [sample.key for sample in samples[0::2]]
    assert [row["key"] for row in PredictionLog(main).rows()] == [sample.key for sample in samples]
    assert not rank_file(main, 1).exists()


def test_cli_scores_llavas_published_answers_without_a_model(tmp_path) -> None:
    """python -m llava_pl.evaluate tasks=[pope] predictions=FILE out=FILE, on LLaVA-1.5-13B's POPE answers: the
    printed and written metrics are the hand-computed ones of tests/test_eval_pope.py."""
    formats = formats_file("llava_pope_test.sample.jsonl").parent
    out = tmp_path / "metrics.json"
    command = [sys.executable, "-m", "llava_pl.evaluate", "tasks=[pope]",
               f"predictions={formats / 'llava_pope_test.answers.llava-v1.5-13b.sample.jsonl'}", f"out={out}",
               f"tasks.pope.questions={formats / 'llava_pope_test.sample.jsonl'}",
               *(f"tasks.pope.labels.{split}={formats / f'coco_pope_{split}.sample.json'}"
                 for split in ("adversarial", "popular", "random")),
               f"hydra.run.dir={tmp_path / 'hydra'}"]
    result = subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())["pope"]
    assert metrics["adversarial/f1"] == pytest.approx(10 / 13) and metrics["random/f1"] == pytest.approx(10 / 11)
    assert "adversarial/f1" in result.stdout


def test_score_file_names_a_malformed_line(benchmarks, tmp_path) -> None:
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": \n')
    with pytest.raises(ValueError, match="answers.jsonl: line 2 is not JSON"):
        score_file(_pope(benchmarks), bad)


@pytest.mark.slow
def test_data_parallel_over_two_processes(saved_llava, data_dir, benchmarks, tmp_path) -> None:
    """devices=2 on CPU (gloo): each process answers every other question into its rank file, rank 0 merges
    them; the answers equal those of a single process."""
    def run(out: Path, devices: int) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "llava_pl.evaluate", f"model={saved_llava}", "tasks=[pope,mme]",
                   f"paths.eval_data={benchmarks}", f"paths.data_dir={data_dir}", f"out_dir={out}",
                   "accelerator=cpu", f"devices={devices}", "batch_size=2", *short(["pope", "mme"]),
                   f"hydra.run.dir={out / 'hydra'}"]
        return subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    single, double = run(tmp_path / "one", 1), run(tmp_path / "two", 2)
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    assert "MEMBER: 2/2" in double.stdout + double.stderr  # Lightning's report of the second process
    for name in ("pope", "mme"):
        one = PredictionLog(tmp_path / "one" / name / PREDICTIONS_FILE).rows()
        two = PredictionLog(tmp_path / "two" / name / PREDICTIONS_FILE).rows()
        assert [(row["key"], row["text"]) for row in two] == [(row["key"], row["text"]) for row in one]
        assert not list((tmp_path / "two" / name).glob("predictions.rank*.jsonl"))
        assert json.loads((tmp_path / "two" / name / METRICS_FILE).read_text()) == \
            json.loads((tmp_path / "one" / name / METRICS_FILE).read_text())
