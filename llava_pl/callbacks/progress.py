"""Training progress in optimizer steps: step/total, loss, tokens/s and the stage's ETA. A rich bar on a
terminal; in a log file (a SLURM job's output, ``> train.log``), one plain line every logging step."""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from llava_pl.callbacks.throughput import TOKENS_PER_S


def format_eta(elapsed: float, steps_done: int, steps_left: int) -> str:
    """``H:MM:SS`` left at the mean pace so far; ``?`` before the first step."""
    if steps_done <= 0:
        return "?"
    return str(datetime.timedelta(seconds=round(elapsed / steps_done * max(steps_left, 0))))


class _StagePace:
    """Where the stage is: its optimizer step out of the total, and the time it has left at its pace so far."""

    def __init__(self) -> None:
        self.total_steps = 0
        self.started = 0.0
        self.first_step = 0

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total_steps = pl_module.total_steps()
        self.started = time.monotonic()
        self.first_step = trainer.global_step  # a resumed stage's pace counts from where it resumed

    def items(self, step: int, logged: dict[str, Any]) -> dict[str, int | str | float]:
        """``step``, ``loss``, ``val_loss``, ``tok/s``, ``eta`` (the metrics logged so far among them)."""
        items: dict[str, int | str | float] = {"step": f"{step}/{self.total_steps}"}
        for name, label in (("train/loss", "loss"), ("val/loss", "val_loss")):
            if name in logged:
                items[label] = float(logged[name])
        if TOKENS_PER_S in logged:
            items["tok/s"] = f"{float(logged[TOKENS_PER_S]):,.0f}"
        items["eta"] = format_eta(time.monotonic() - self.started, step - self.first_step, self.total_steps - step)
        return items


class LlavaProgressBar(RichProgressBar):
    """Lightning's rich bar (batches of the epoch, its own time columns) with, beside it, the stage's optimizer
    step out of its total, the training loss (and the last validation loss), tokens/s from
    ``ThroughputMonitor`` and the time the stage has left. Metrics refresh every ``refresh_rate`` batches.
    """

    def __init__(self, refresh_rate: int = 10, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.pace = _StagePace()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.pace.start(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        return self.pace.items(trainer.global_step, super().get_metrics(trainer, pl_module))


class ProgressLines(ProgressBar):
    """One plain line every ``trainer.log_every_n_steps`` optimizer steps, on rank 0, to standard output:

        [finetune] step 120/5198  loss 1.2345  tok/s 45,678  eta 2:03:04

    plus one after each validation (its ``val_loss``) and one when the stage ends. Nothing that redraws, so a
    log file holds exactly these lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pace = _StagePace()
        self._enabled = True
        self._last_step = -1
        self._stage = ""

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.print`` goes through the enabled progress display: a plain line here too."""
        print(*args, **kwargs, flush=True)

    def _write(self, trainer: L.Trainer, extra: str = "") -> None:
        items = self.pace.items(trainer.global_step, trainer.progress_bar_metrics)
        fields = [f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                  for name, value in items.items()]
        print(f"[{self._stage}] " + "  ".join(fields) + extra, file=sys.stdout, flush=True)
        self._last_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pace.start(trainer, pl_module)
        stage = getattr(pl_module, "stage", None)
        self._stage = getattr(stage, "name", "train")
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, every = trainer.global_step, trainer.log_every_n_steps
        if self._enabled and every and step != self._last_step and step % every == 0:
            self._write(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and not trainer.sanity_checking and "val/loss" in trainer.progress_bar_metrics:
            self._write(trainer, "  (validation)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            elapsed = datetime.timedelta(seconds=round(time.monotonic() - self.pace.started))
            self._write(trainer, f"  (done in {elapsed})")


def progress_display(terminal: bool | None = None, refresh_rate: int = 10, leave: bool = True) -> ProgressBar:
    """``LlavaProgressBar`` on a terminal, else ``ProgressLines`` (a rich bar redrawn into a file leaves nothing
    readable). ``terminal``: ``None`` asks whether standard output is one; ``True``/``False`` force the choice."""
    if sys.stdout.isatty() if terminal is None else terminal:
        return LlavaProgressBar(refresh_rate=refresh_rate, leave=leave)
    return ProgressLines()
