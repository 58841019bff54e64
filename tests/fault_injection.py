"""Callbacks that inject faults into a real training run (named by ``+callbacks.<name>._target_=...``)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

INJECTED_IDS: list[str] = []  # sample ids of the batch InjectNonFinite poisoned (in-process runs)


class SlowSteps(Callback):
    """Sleeps after every micro-batch, so that a signal sent from outside lands mid-training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


class InjectNonFinite(Callback):
    """Sets the pixels of one micro-batch to +inf, which makes its loss NaN."""

    def __init__(self, batch_index: int) -> None:
        self.batch_index = batch_index

    def on_train_batch_start(self, trainer, pl_module, batch: dict, batch_idx: int) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch_index:
            batch["pixel_values"].fill_(float("inf"))
            INJECTED_IDS[:] = list(batch["sample_ids"])


class RaiseOutOfMemory(Callback):
    """Raises what CUDA raises when the first step does not fit."""

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)")


class SendSignal(Callback):
    """Sends a signal to its own process after the micro-batch ``batch_index`` (counted over the whole fit)."""

    def __init__(self, batch_index: int, name: str = "SIGUSR1") -> None:
        self.batch_index = batch_index
        self.signum = signal.Signals[name]

    def on_train_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch_index:
            os.kill(os.getpid(), self.signum)


class PoisonGradient(Callback):
    """Makes one gradient entry infinite after the backward pass of micro-batch ``batch_index`` (finite loss)."""

    def __init__(self, batch_index: int) -> None:
        self.batch_index = batch_index

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch_index:
            parameter = next(p for p in pl_module.parameters() if p.grad is not None)
            parameter.grad.view(-1)[0] = float("inf")
