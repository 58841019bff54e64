"""Prediction files: appended as answers are produced (so a run resumes), merged across ranks, and read back
in llava_pl's own layout or LLaVA's answer-file layout for scoring.

One JSON object per line, LLaVA's answer-file fields first, so LLaVA's own scripts read llava_pl's files:
``{"question_id", "prompt", "text", "model_id", "key"}``. ``key`` is llava_pl's sample key; a LLaVA answer
file has none, and the task derives it from ``question_id`` (and ``prompt`` where ids repeat).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llava_pl.eval.task import Sample, Task, TaskDataError, occurrence_key, read_json_records

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


def rank_file(path: Path, rank: int) -> Path:
    """Where one rank of a data-parallel run appends its share of the answers."""
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of a prediction log and the byte length they span. A last line that does not
    parse is what an interrupted write leaves; it is not counted, so appending resumes after the good lines."""
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                rows.append(json.loads(raw))
            except ValueError:
                if raw.endswith(b"\n"):  # a complete line: not an interrupted write
                    raise TaskDataError(f"{path}: line {number} is not JSON (only a last, unfinished line may be)")
                break
            good_bytes += len(raw)
    return rows, good_bytes


class PredictionLog:
    """A JSON Lines file of predictions that only grows; each appended batch is flushed to disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return read_lines(self.path)[0]

    def repair(self) -> None:
        """Cuts an unfinished last line (left by an interruption) so that appends start on a line boundary."""
        if self.path.is_file():
            _, good_bytes = read_lines(self.path)
            if good_bytes != self.path.stat().st_size:
                with self.path.open("r+b") as file:
                    file.truncate(good_bytes)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())


def prediction_row(sample: Sample, text: str, model_id: str) -> dict[str, Any]:
    return {"question_id": sample.question_id, "prompt": sample.prompt, "text": text, "model_id": model_id,
            "key": sample.key}


def merge_rank_files(path: Path, order: Sequence[Sample]) -> None:
    """Folds every ``<name>.rank<r>.jsonl`` beside ``path`` into it and removes them; the file is left in the
    task's order (rows of unknown keys last). The first row of a key answered twice wins."""
    pieces = sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))
    rows = [row for piece in [path, *pieces] for row in PredictionLog(piece).rows()]
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_key.setdefault(str(row.get("key", "")), row)
    position = {sample.key: index for index, sample in enumerate(order)}
    ordered = sorted(by_key.values(), key=lambda row: position.get(str(row.get("key", "")), len(position)))
    if pieces or ordered != rows:
        temporary = path.with_suffix(".merging")
        temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered), encoding="utf-8")
        os.replace(temporary, path)
    for piece in pieces:
        piece.unlink()


def read_answer_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a predictions file: JSON Lines (llava_pl's or LLaVA's answer files) or a JSON array."""
    rows = read_json_records(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "text" not in row or ("question_id" not in row and "key" not in row):
            raise TaskDataError(f"{path}: record {number} needs 'question_id' (or 'key') and 'text'; got {row!r:.200}")
    return rows


def answers_by_key(
    task: Task,
    samples: Sequence[Sample],
    rows: Sequence[Mapping[str, Any]],
    source: str,
    ignore_unknown: bool = False,
) -> dict[str, str]:
    """Maps each answer row to its sample's key: by ``key`` where the row has one (llava_pl's files), else by
    the task's reading of ``question_id`` and ``prompt`` (LLaVA's answer files). A row that matches no
    question is an error naming the file, the record and its id, unless ``ignore_unknown`` (a run's own file
    may hold answers to questions outside its current ``limit``)."""
    known = {sample.key for sample in samples}
    occurrences: Counter[str] = Counter()
    answers: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if "key" in row:
            key = str(row["key"])
        else:
            base = task.key_of(row["question_id"], row.get("prompt"))
            occurrences[base] += 1
            key = occurrence_key(base, occurrences[base])
        if key not in known:
            if ignore_unknown:
                continue
            raise TaskDataError(
                f"{source}: record {number} (question_id {row.get('question_id')!r}) matches no question of the "
                f"task ({type(task).__name__}, key {key!r})"
            )
        answers[key] = str(row["text"])
    return answers
