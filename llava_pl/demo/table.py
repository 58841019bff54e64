"""The demo's results table: one row per question type (or per colour-naming probe) with the accuracy with the
image, with a blank image and by chance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from llava_pl.eval.task import Metrics

COUNTS = ("n", "several_n")


def per_type(metrics: Metrics, row_name: str = "") -> dict[str, dict]:
    """``{"color/accuracy": …}`` → ``{"color": {"accuracy": …, "blank_accuracy": …, "chance": …, "n": …}}``;
    a metric without a ``<row>/`` prefix goes to the row ``row_name``."""
    table: dict[str, dict] = defaultdict(dict)
    for name, value in metrics.items():
        row, metric = name.rsplit("/", 1) if "/" in name else (row_name, name)
        table[row][metric] = int(value) if metric in COUNTS else value
    return dict(table)


def table_rows(results: Mapping[str, Metrics]) -> dict[str, dict]:
    """The rows of every task of an evaluation's ``{task: metrics}`` (``<run>/eval/metrics.json``): the shapes
    task's question types, and one row per colour-naming probe (``color_naming/caption`` → ``caption``)."""
    rows: dict[str, dict] = {}
    for task, metrics in results.items():
        rows |= per_type(metrics, row_name=task.rsplit("/", 1)[-1])
    return rows


def format_table(rows: Mapping[str, Mapping]) -> str:
    """One line per row; a ``2-3 shapes`` column where the rows have ``several_accuracy``."""
    several = any("several_accuracy" in row for row in rows.values())
    lines = [f"{'question type':<14} {'accuracy':>9} {'blank image':>12} {'chance':>8} {'n':>6}"
             + (f" {'2-3 shapes':>11} {'n':>6}" if several else "")]
    for kind, row in rows.items():
        blank = f"{row['blank_accuracy']:>12.1%}" if "blank_accuracy" in row else f"{'-':>12}"  # blank_control off
        line = f"{kind:<14} {row['accuracy']:>9.1%} {blank} {row['chance']:>8.1%} {row['n']:>6}"
        if "several_accuracy" in row:
            line += f" {row['several_accuracy']:>11.1%} {row['several_n']:>6}"
        lines.append(line)
    return "\n".join(lines)
