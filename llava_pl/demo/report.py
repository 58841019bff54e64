"""The end-of-run picture, ``report.png``: held-out images with the question, the model's answer and whether it
was right, beside the training and validation loss curves of every stage. It reads what the end-of-run
evaluation wrote (``<run>/eval``): the shapes task's ``answers.jsonl`` and the run's ``metrics.json``."""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

from llava_pl.callbacks.history import TRAIN_LOSS, VAL_LOSS, read_history
from llava_pl.demo.shapes_task import normalize_answer
from llava_pl.demo.table import table_rows

log = logging.getLogger(__name__)

RIGHT, WRONG = "#1a7f37", "#cf222e"


@dataclass(frozen=True)
class Panel:
    image: Path
    question: str
    answer: str
    reference: str

    @property
    def right(self) -> bool:
        return normalize_answer(self.answer) == normalize_answer(self.reference)


def read_panels(predictions: Path, image_folder: Path, count: int) -> list[Panel]:
    """``count`` questions spread evenly over a predictions file in the layout of the shapes task's
    ``answers.jsonl`` (``image``, ``text``, ``answer``, ``prediction`` per line)."""
    records = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    picked = sorted({int(position * len(records) / count) for position in range(count)}) if records else []
    return [Panel(image_folder / records[index]["image"], records[index]["text"], records[index]["prediction"],
                  records[index]["answer"]) for index in picked]


class RunReport:
    """Draws ``out`` from what the run wrote; each half is left out when its input is missing.

    Args:
        out: the PNG file to write (``<run>/report.png``).
        history: the ``LossHistory`` file of the run (``null`` without the ``monitor`` group's history).
        predictions: the evaluation's per-question answers; right or wrong by the shapes task's exact match.
        image_folder: the folder the predictions' image paths are relative to.
        scores: the evaluation's ``{task: {metric: value}}`` (``<run>/eval/metrics.json``); the accuracy and
            chance of each question type (shapes) or probe (colour naming) are shown above the curves.
        num_images: held-out questions drawn, in rows of ``columns``.
    """

    def __init__(
        self,
        out: str,
        history: str | None = None,
        predictions: str | None = None,
        image_folder: str | None = None,
        scores: str | None = None,
        num_images: int = 12,
        columns: int = 4,
    ) -> None:
        self.out = Path(out)
        self.history = Path(history) if history else None
        self.predictions = Path(predictions) if predictions else None
        self.image_folder = Path(image_folder) if image_folder else Path(".")
        self.scores = Path(scores) if scores else None
        self.num_images = num_images
        self.columns = columns

    def panels(self) -> list[Panel]:
        if self.predictions is None or not self.predictions.is_file():
            return []
        return read_panels(self.predictions, self.image_folder, self.num_images)

    def __call__(self) -> Path:
        panels = self.panels()
        history = read_history(self.history) if self.history else {}
        columns = min(self.columns, len(panels)) if panels else 0
        rows = max(1, -(-len(panels) // columns)) if columns else 1
        curve_columns = 3 if history or not panels else 0
        figure = Figure(figsize=(2.6 * columns + 2.2 * curve_columns + 0.5, 3.0 * rows + 0.6), dpi=100)
        grid = figure.add_gridspec(rows, columns + curve_columns)
        for index, panel in enumerate(panels):
            draw_panel(figure.add_subplot(grid[index // columns, index % columns]), panel)
        if curve_columns:
            draw_curves(figure.add_subplot(grid[:, columns:]), history, self._score_line())
        if panels:
            right = sum(panel.right for panel in panels)
            figure.suptitle(f"{right} of {len(panels)} held-out answers shown are right", fontsize=12)
        figure.tight_layout()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(figure).print_png(str(self.out))
        log.info(f"wrote {self.out}")
        return self.out

    def _score_line(self) -> str:
        if self.scores is None or not self.scores.is_file():
            return ""
        table = table_rows(json.loads(self.scores.read_text()))
        return "\n".join(textwrap.wrap(", ".join(
            f"{kind} {row['accuracy']:.0%} (chance {row['chance']:.0%})" for kind, row in table.items()
            if "accuracy" in row and "chance" in row), 60))


def draw_panel(axes: Axes, panel: Panel) -> None:
    with Image.open(panel.image) as image:
        axes.imshow(image.convert("RGB"), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    colour = RIGHT if panel.right else WRONG
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    verdict = "right" if panel.right else f"wrong (is: {panel.reference})"
    first_line = panel.question.splitlines()[0] if panel.question else ""  # not the answer-format instruction
    question = "\n".join(textwrap.wrap(first_line, 34)[:3])
    axes.set_title(f"{question}\n→ {panel.answer or '(no answer)'}\n{verdict}", fontsize=8, color=colour)


def draw_curves(axes: Axes, history: dict[str, dict[str, dict[int, float]]], scores: str) -> None:
    """The stages one after another on one step axis, a dashed line where a stage begins."""
    offset = 0
    for stage, metrics in history.items():
        steps = [step for values in metrics.values() for step in values]
        if offset:
            axes.axvline(offset, color="grey", linestyle="--", linewidth=1)
        axes.text(offset + min(steps, default=0), 1.0, f" {stage}", transform=axes.get_xaxis_transform(), va="top",
                  fontsize=9)
        for metric, style in ((TRAIN_LOSS, "-"), (VAL_LOSS, "o-")):
            points = sorted(metrics.get(metric, {}).items())
            if points:
                axes.plot([offset + step for step, _ in points], [value for _, value in points], style,
                          markersize=4, label=f"{stage} {metric}")
        offset += max(steps, default=0)
    if history:
        axes.set_yscale("log")  # a language model's loss falls by orders of magnitude
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(plain)
        axes.legend(fontsize=8)
    axes.set_xlabel("optimizer step (stages in order)")
    axes.set_ylabel("loss")
    axes.set_title(scores or "loss", fontsize=9)
    axes.grid(True, alpha=0.3)
