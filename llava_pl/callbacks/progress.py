"""A rich progress bar that reads in optimizer steps: step/total, loss, tokens/s and the stage's ETA."""

from __future__ import annotations

import datetime
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from llava_pl.callbacks.throughput import TOKENS_PER_S


def format_eta(elapsed: float, steps_done: int, steps_left: int) -> str:
    """``H:MM:SS`` left at the mean pace so far; ``?`` before the first step."""
    if steps_done <= 0:
        return "?"
    return str(datetime.timedelta(seconds=round(elapsed / steps_done * max(steps_left, 0))))


class LlavaProgressBar(RichProgressBar):
    """Lightning's rich bar (batches of the epoch, its own time columns) with, beside it, the stage's optimizer
    step out of its total, the training loss (and the last validation loss), tokens/s from
    ``ThroughputMonitor`` and the time the stage has left. Metrics refresh every ``refresh_rate`` batches.
    """

    def __init__(self, refresh_rate: int = 10, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._total_steps = 0
        self._started = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._total_steps = pl_module.total_steps()
        self._started = time.monotonic()
        self._first_step = trainer.global_step

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        logged = super().get_metrics(trainer, pl_module)
        step = trainer.global_step
        items: dict[str, int | str | float] = {"step": f"{step}/{self._total_steps}"}
        for name, label in (("train/loss", "loss"), ("val/loss", "val_loss")):
            if name in logged:
                items[label] = logged[name]
        if TOKENS_PER_S in logged:
            items["tok/s"] = f"{logged[TOKENS_PER_S]:,.0f}"
        items["eta"] = format_eta(time.monotonic() - self._started, step - self._first_step, self._total_steps - step)
        return items
