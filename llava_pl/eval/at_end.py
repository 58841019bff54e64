"""Evaluation at the end of a training run: the tasks ``tasks=[...]`` selects (the same as during training), on
``eval.end_limit`` questions each (all by default), split over every rank. Like the evaluation CLI it writes
``<out_dir>/<task>/predictions.jsonl`` and ``metrics.json`` (plus the task's own files), and all metrics,
``{task: {metric: value}}``, to ``<out_dir>/metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.eval.predictions import METRICS_FILE, PREDICTIONS_FILE
from llava_pl.eval.processes import Processes
from llava_pl.eval.runner import Runner
from llava_pl.eval.task import Metrics, Task
from llava_pl.eval.task_config import selected_tasks
from llava_pl.model.llava import LlavaModel


def evaluates_at_end(cfg: DictConfig) -> bool:
    return bool(cfg.get("tasks")) and bool((cfg.get("eval") or {}).get("at_end"))


def evaluate_tasks(
    tasks: dict[str, Task], runner: Runner, out_dir: Path, limit: int | None, processes: Processes,
) -> dict[str, Metrics]:
    """Every rank must call this; every rank returns rank 0's ``{task: metrics}``, and rank 0 writes them and
    prints each task's summary. Answers an earlier evaluation left in ``out_dir`` are not reused: they may come
    from other weights."""
    results: dict[str, Metrics] = {}
    for name, task in tasks.items():
        if processes.is_main:
            (out_dir / name / PREDICTIONS_FILE).unlink(missing_ok=True)
        results[name] = runner.run(name, task, out_dir, limit=limit, processes=processes).metrics
    if processes.is_main:
        (out_dir / METRICS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        for name, metrics in results.items():
            print(f"{name}\n{tasks[name].summary(metrics)}")
    return results


def evaluate_at_end(
    cfg: DictConfig,
    model: LlavaModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    image_transform: ImageTransform,
    out_dir: Path,
) -> dict[str, Metrics]:
    """The end-of-run evaluation ``cfg`` asks for, on every process of the run (``{}`` when it asks for none)."""
    if not evaluates_at_end(cfg):
        return {}
    runner = Runner(model, tokenizer, template, image_transform, batch_size=int(cfg.eval.end_batch_size))
    return evaluate_tasks(selected_tasks(cfg), runner, out_dir, cfg.eval.get("end_limit"), Processes.current())
