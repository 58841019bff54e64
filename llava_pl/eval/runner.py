"""Runs tasks: answers the questions not answered yet in batches, appends each batch to the task's
predictions file, and scores the file; the same code serves the CLI, the end-of-training evaluation and the
evaluation during training.

A run writes, per task, ``<out_dir>/<task>/predictions.jsonl`` (grown batch by batch, so an interrupted run
resumes where it stopped when pointed at the same folder) and ``<out_dir>/<task>/metrics.json``. Over
several processes (``llava_pl.eval.processes``) each rank answers every ``world_size``-th unanswered question,
appending to its own ``predictions.rank<r>.jsonl`` (what an interrupted run resumes from); the answers are then
gathered on rank 0, which writes the main file and scores it, and every rank returns rank 0's result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.eval.predictions import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    PredictionLog,
    answers_by_key,
    merge_rank_files,
    prediction_row,
    rank_file,
    read_answer_file,
)
from llava_pl.eval.processes import Processes, interleave, split
from llava_pl.eval.task import Metrics, Sample, Task
from llava_pl.generate import Answerer
from llava_pl.model.llava import LlavaModel

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    metrics: Metrics
    predictions: Path
    answers: dict[str, str]
    samples: list[Sample]


class Runner:
    """Answers task questions with a model and scores them.

    Args:
        batch_size: questions per ``generate`` call (left-padded, with a KV cache).
        model_id: written into each prediction line (LLaVA's answer files carry one too).
        autocast: a context manager factory wrapped around generation (e.g. Fabric's mixed precision).
        sampling: ``generate`` options; greedy without.
    """

    def __init__(
        self,
        model: LlavaModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        batch_size: int = 16,
        model_id: str = "llava_pl",
        autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
        **sampling: Any,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.batch_size = batch_size
        self.model_id = model_id
        self.autocast = autocast
        self.sampling = sampling

    def answer(
        self, task: Task, samples: Sequence[Sample], log_file: PredictionLog, real: int | None = None,
        synced: bool = False,
    ) -> list[dict[str, Any]]:
        """Answers ``samples`` batch by batch, appending each batch's rows to ``log_file`` as soon as it is done,
        and returns the rows. Only the first ``real`` samples (all by default) count: the rest are fillers
        that keep sharded ranks in step, their answers dropped. ``synced``: every ``generate`` call runs until
        every rank's answers are done."""
        real = len(samples) if real is None else real
        template = self.template if task.template is None else task.template  # a task may ask in its own
        answerer = Answerer(self.model, self.tokenizer, template, task.max_new_tokens, self.batch_size,
                            synced=synced, **self.sampling)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(samples), self.batch_size):
            batch = samples[start : start + self.batch_size]
            images = [task.image(sample, self.image_transform) for sample in batch]
            with self.autocast():
                texts = answerer([sample.prompt for sample in batch], images)
            kept = [prediction_row(sample, text, self.model_id)
                    for sample, text in zip(batch[: max(real - start, 0)], texts)]
            log_file.append(kept)
            rows += kept
        return rows

    def run(
        self,
        name: str,
        task: Task,
        out_dir: str | os.PathLike,
        limit: int | None = None,
        processes: Processes | None = None,
    ) -> TaskResult:
        """Answers what ``out_dir/<name>/predictions.jsonl`` lacks (split over ``processes``), then scores on
        rank 0; every rank returns rank 0's result. Every rank must call it, with the same task and limit."""
        processes = processes or Processes()
        task_dir = Path(out_dir) / name
        main_file = task_dir / PREDICTIONS_FILE
        samples = task.subset(task.samples(), limit)
        pending_keys = self._pending(name, task, samples, main_file) if processes.is_main else None
        pending_keys = set(processes.broadcast(pending_keys))  # rank 0's view of the folder decides for all
        share = split([sample for sample in samples if sample.key in pending_keys], processes.rank,
                      processes.world_size, processes.lockstep)
        own_file = rank_file(main_file, processes.rank) if processes.world_size > 1 else main_file
        rows = self.answer(task, share.items, PredictionLog(own_file), share.real, synced=processes.synced)
        pieces = processes.gather(rows)
        scored = None
        if processes.is_main:
            if processes.world_size > 1:
                PredictionLog(main_file).append(interleave(pieces))
            merge_rank_files(main_file, samples)  # task order; rank files left by an interruption folded in
            result = score_and_write(name, task, samples, main_file, task_dir)
            scored = (result.metrics, result.answers)
        metrics, answers = processes.broadcast(scored)
        if processes.world_size > 1:
            own_file.unlink(missing_ok=True)  # its rows are in the main file now
        return TaskResult(metrics, main_file, answers, samples)

    def _pending(self, name: str, task: Task, samples: Sequence[Sample], main_file: Path) -> list[str]:
        """The keys of ``samples`` that the predictions file does not answer yet."""
        main_file.parent.mkdir(parents=True, exist_ok=True)
        PredictionLog(main_file).repair()  # an interrupted run may have left rank files and an unfinished line
        merge_rank_files(main_file, samples)
        done = answers_by_key(task, samples, PredictionLog(main_file).rows(), str(main_file), ignore_unknown=True)
        if done:
            log.info(f"{name}: {len(done)} of {len(samples)} questions already answered in {main_file}")
        return [sample.key for sample in samples if sample.key not in done]


def score_and_write(name: str, task: Task, samples: Sequence[Sample], predictions: Path, out_dir: Path) -> TaskResult:
    """Scores a predictions file against ``samples`` and writes ``metrics.json`` (plus any task outputs)."""
    answers = answers_by_key(task, samples, read_answer_file(predictions), str(predictions), ignore_unknown=True)
    metrics = task.score(samples, answers)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    for path in task.write_outputs(samples, answers, out_dir):
        log.info(f"{name}: wrote {path}")
    return TaskResult(metrics, predictions, answers, list(samples))


def score_file(task: Task, predictions: str | os.PathLike) -> Metrics:
    """Scores an existing predictions file (llava_pl's or LLaVA's answer format) over all of the task's
    questions, without a model; questions the file does not answer count as wrong."""
    samples = task.samples()
    answers = answers_by_key(task, samples, read_answer_file(predictions), str(predictions))
    missing = len(samples) - len(answers)
    if missing:
        log.warning(f"{predictions}: {missing} of {len(samples)} questions have no answer; they count as wrong")
    return task.score(samples, answers)


def flat_metrics(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"eval/<task>/<metric>": value}`` for loggers."""
    return {f"{prefix}/{key}": float(value) for key, value in metrics.items()}
