"""The demo's end-of-training evaluation: the ``shapes`` task through the task runner, reported as a table of
accuracy per question type with the image, with a blank image, and by chance."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import Template
from llava_pl.eval.predictions import PREDICTIONS_FILE
from llava_pl.eval.processes import Processes
from llava_pl.eval.runner import Runner
from llava_pl.eval.task import Metrics, read_json_records
from llava_pl.eval.tasks.shapes import BLANK_SUFFIX, ShapesTask
from llava_pl.model.llava import LlavaModel

TASK_NAME = "shapes"


def per_type(metrics: Metrics) -> dict[str, dict]:
    """``{"color/accuracy": …, …}`` → ``{"color": {"accuracy": …, "blank_accuracy": …, "chance": …, "n": …}}``
    (the layout of ``shapes_eval.json``)."""
    table: dict[str, dict] = defaultdict(dict)
    for name, value in metrics.items():
        kind, metric = name.rsplit("/", 1)
        table[kind][metric] = int(value) if metric in ("n", "several_n") else value
    return dict(table)


def format_table(results: dict[str, dict]) -> str:
    """One row per question type; a ``2-3 shapes`` column where the results have ``several_accuracy``."""
    several = any("several_accuracy" in row for row in results.values())
    lines = [f"{'question type':<14} {'accuracy':>9} {'blank image':>12} {'chance':>8} {'n':>6}"
             + (f" {'2-3 shapes':>11} {'n':>6}" if several else "")]
    for kind, row in results.items():
        line = f"{kind:<14} {row['accuracy']:>9.1%} {row['blank_accuracy']:>12.1%} {row['chance']:>8.1%} {row['n']:>6}"
        if "several_accuracy" in row:
            line += f" {row['several_accuracy']:>11.1%} {row['several_n']:>6}"
        lines.append(line)
    return "\n".join(lines)


class ShapesEvaluation:
    """Answers the held-out shapes questions twice — with each image and with a blank one — and scores both.

    Writes ``shapes_eval.json`` (the table) and ``shapes_predictions.jsonl`` (each question with its
    ``prediction`` and ``blank_prediction``) to the run folder, beside the runner's ``shapes/`` folder. Over
    several ``processes`` every rank answers its share and returns the table; rank 0 writes the files.

    Args:
        questions: JSON Lines with ``question_id``, ``image``, ``text``, ``answer`` and ``type``.
        image_folder: the folder the ``image`` paths are relative to.
        limit: evaluate only the first ``limit`` questions.
    """

    def __init__(
        self,
        questions: str,
        image_folder: str,
        batch_size: int = 64,
        max_new_tokens: int = 8,
        limit: int | None = None,
        output_name: str = "shapes_eval.json",
    ) -> None:
        self.task = ShapesTask(questions, image_folder, blank_control=True, max_new_tokens=max_new_tokens)
        self.batch_size = batch_size
        self.limit = limit
        self.output_name = output_name

    def __call__(
        self,
        model: LlavaModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        image_transform: ImageTransform,
        run_dir: str | Path,
        processes: Processes | None = None,
    ) -> dict[str, dict]:
        run_dir = Path(run_dir)
        processes = processes or Processes()
        if processes.is_main:  # answers of an earlier evaluation in this folder may come from other weights
            (run_dir / TASK_NAME / PREDICTIONS_FILE).unlink(missing_ok=True)
        runner = Runner(model, tokenizer, template, image_transform, batch_size=self.batch_size)
        result = runner.run(TASK_NAME, self.task, run_dir, limit=self.limit, processes=processes)
        results = per_type(result.metrics)
        if not processes.is_main:
            return results
        (run_dir / self.output_name).write_text(json.dumps(results, indent=2) + "\n")
        with (run_dir / "shapes_predictions.jsonl").open("w") as file:
            for record in read_json_records(self.task.questions)[: self.limit]:
                key = str(record["question_id"])
                row = {**record, "prediction": result.answers.get(key, ""),
                       "blank_prediction": result.answers.get(key + BLANK_SUFFIX, "")}
                file.write(json.dumps(row) + "\n")
        return results
