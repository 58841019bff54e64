"""A test callback: each optimizer step's loss over the whole global batch, whatever the world size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class StepLosses(Callback):
    """Appends ``{"stage", "step", "loss"}`` per optimizer step to ``path`` (JSON lines, from rank 0): the mean
    of the micro-batch losses of the step's accumulation window, averaged over the ranks. With one sample per
    micro-batch that is the mean per-sample loss of the global batch, the same number at any world size."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.window: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.window.append(outputs["loss"].detach().float())  # Lightning divides it by the accumulation
        if len(self.window) < trainer.accumulate_grad_batches:
            return
        loss = trainer.strategy.reduce(torch.stack(self.window).sum(), reduce_op="mean")
        self.window = []
        if trainer.is_global_zero:
            with self.path.open("a") as file:
                record = {"stage": module.stage.name, "step": trainer.global_step - 1, "loss": float(loss)}
                file.write(json.dumps(record) + "\n")
