"""The run's loss curves as a file, for the end-of-run report: whatever loggers are chosen, and across the
stages (and the resumes) of one run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"


class LossHistory(Callback):
    """Appends ``{"stage", "step", "metric", "value"}`` lines to ``path`` on rank 0: the training loss at the
    steps Lightning logs at (the last micro-batch's, as logged) and the validation loss after each validation.

    A resumed stage repeats the steps after its checkpoint; readers keep the last line of each step.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, every = trainer.global_step, trainer.log_every_n_steps
        if step == self._last_step or not every or step % every:
            return
        self._last_step = step
        if isinstance(outputs, dict) and "loss" in outputs:
            # Lightning hands callbacks the loss divided by the accumulation; the logged value is the undivided one
            self._append(trainer, pl_module, TRAIN_LOSS, float(outputs["loss"]) * trainer.accumulate_grad_batches)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and VAL_LOSS in trainer.callback_metrics:
            self._append(trainer, pl_module, VAL_LOSS, float(trainer.callback_metrics[VAL_LOSS]))

    def _append(self, trainer: L.Trainer, pl_module: L.LightningModule, metric: str, value: float) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"stage": pl_module.stage.name, "step": trainer.global_step, "metric": metric, "value": value}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def read_history(path: str | Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{stage: {metric: {step: value}}}`` in the order stages first appear; later lines of a step win."""
    history: dict[str, dict[str, dict[int, float]]] = {}
    path = Path(path)
    if not path.is_file():
        return history
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            steps = history.setdefault(record["stage"], {}).setdefault(record["metric"], {})
            steps[int(record["step"])] = record["value"]
    return history
