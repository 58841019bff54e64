"""The ``perf/`` and ``data/`` metrics of training: throughput, MFU, step and data-wait times, padding, image
tokens and peak memory, each averaged over the optimizer steps between two logging steps.

Costs per micro-batch: two reductions of the attention mask, left on the device; the host reads them, and
waits for the device once, only at logging steps (where Lightning reads the loss anyway).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from llava_pl.metrics.data_wait import DataWaitProfiler
from llava_pl.metrics.flops import FlopsCounter
from llava_pl.metrics.peak import DatasheetPeak, MeasuredPeak, synchronize

log = logging.getLogger(__name__)

TOKENS_PER_S = "perf/tokens_per_s"


class _Window:
    """What the micro-batches between two logging steps added up to."""

    def __init__(self, opened: float, waited_before: float) -> None:
        self.opened = opened
        self.waited_before = waited_before  # the first batch's fetch came before the window opened
        self.paused = 0.0  # validation inside the window
        self.steps = self.micro_batches = self.samples = self.positions = self.images = 0
        self.tokens: torch.Tensor | int = 0  # device tensors until the window closes
        self.squared_lengths: torch.Tensor | int = 0


class ThroughputMonitor(Callback):
    """Logs, every ``trainer.log_every_n_steps`` optimizer steps:

    - ``perf/tokens_per_s``, ``perf/samples_per_s``: non-padding tokens (image positions included) and samples
      per second of training, measured on rank 0 and multiplied by the world size;
    - ``perf/mfu``: model FLOPs (``llava_pl.metrics.flops``) per second per device over ``peak``;
      ``perf/tflops``: the same FLOPs per second per device, in TFLOP/s;
    - ``perf/step_time``: seconds per optimizer step; ``perf/data_wait``: seconds of it spent waiting for
      batches from the loader;
    - ``perf/peak_memory_gib``: the device's peak allocated memory this stage (on a CPU, the process's peak
      resident memory);
    - ``data/padding_fraction``, ``data/tokens_per_batch``, ``data/image_tokens_per_batch``: per micro-batch.

    Training time excludes validation, and the work other callbacks do after a logging step (this callback
    comes first, so it closes its window before sample generation, evaluation or a checkpoint runs).

    Args:
        peak: peak FLOP/s per device (``conf/peak_flops``); ``None`` logs ``perf/tflops`` but no MFU.
    """

    def __init__(self, peak: DatasheetPeak | MeasuredPeak | None = None) -> None:
        self.peak = peak
        self.peak_flops: float | None = None
        self.counter: FlopsCounter | None = None
        self._profiler: DataWaitProfiler | None = None
        self._window: _Window | None = None
        self._last_step = 0
        self._validation_started: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._profiler = DataWaitProfiler(trainer.profiler)
            trainer.profiler = self._profiler

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._profiler is not None and trainer.profiler is self._profiler:
            trainer.profiler = self._profiler.inner
        self._profiler = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter = FlopsCounter.from_model(pl_module.model)
        device = trainer.strategy.root_device
        if self.peak is not None:
            self.peak_flops = self.peak(device, trainer.precision_plugin.forward_context)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._last_step = trainer.global_step
        self._window = None
        if trainer.is_global_zero:
            peak = f"{self.peak_flops / 1e12:.3g} TFLOP/s per device ({self.peak!r})" if self.peak_flops else "none"
            log.info(f"MFU counts, per weight and position:\n{self.counter.describe()}\npeak: {peak}")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window is None:
            self._window = _Window(time.perf_counter(), self._take_wait())
        window = self._window
        mask = batch["attention_mask"]
        # a packed row (data.packing) holds several samples, each attending only within itself
        lengths = batch["sample_lengths"] if "sample_lengths" in batch else mask.sum(dim=1)
        window.tokens = window.tokens + lengths.sum()
        window.squared_lengths = window.squared_lengths + (lengths * lengths).sum()
        window.micro_batches += 1
        window.samples += lengths.shape[0]
        window.positions += mask.numel()
        window.images += batch["pixel_values"].shape[0]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_step or self._window is None:
            return  # mid-accumulation: no optimizer step yet
        self._last_step = trainer.global_step
        self._window.steps += 1
        every = trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:  # the steps at which Lightning writes the logs
            metrics = self._close(trainer)
            for name, value in metrics.items():
                pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=name == TOKENS_PER_S)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._window is not None and self._validation_started is not None:
            self._window.paused += time.perf_counter() - self._validation_started
        self._validation_started = None

    def _take_wait(self) -> float:
        return self._profiler.take() if self._profiler is not None else 0.0

    def _close(self, trainer: L.Trainer) -> dict[str, float]:
        window, self._window = self._window, None
        assert window is not None and self.counter is not None
        device = trainer.strategy.root_device
        synchronize(device)
        seconds = time.perf_counter() - window.opened - window.paused + window.waited_before
        waited = window.waited_before + self._take_wait()
        tokens, squared = int(window.tokens), int(window.squared_lengths)
        flops_per_second = self.counter.flops(tokens, squared, window.images) / seconds
        world = trainer.world_size
        metrics = {
            TOKENS_PER_S: tokens / seconds * world,
            "perf/samples_per_s": window.samples / seconds * world,
            "perf/tflops": flops_per_second / 1e12,
            "perf/step_time": seconds / window.steps,
            "perf/data_wait": waited / window.steps,
            "perf/peak_memory_gib": peak_memory_bytes(device) / 2**30,
            "data/padding_fraction": 1 - tokens / window.positions,
            "data/tokens_per_batch": tokens / window.micro_batches,
            "data/image_tokens_per_batch": window.images * self.counter.image_tokens / window.micro_batches,
        }
        if self.peak_flops:
            metrics["perf/mfu"] = flops_per_second / self.peak_flops
        return metrics


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a CUDA device since its last reset; elsewhere the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
