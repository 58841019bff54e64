"""Logs what the training data delivered: samples per source and bad samples per reason, summed over ranks,
and prints a summary of both at the end of the stage."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from llava_pl.data.bad_samples import REASONS, BadSampleReport

log = logging.getLogger(__name__)


class DataCounts(Callback):
    """``data/samples/<source>`` (samples trained, all ranks) and ``data/bad_samples/<reason>`` (dropped while
    loading, all ranks, plus those left out before training), cumulative, at every logging step and at the end
    of the stage (so a run shorter than ``log_every_n_steps``, or the steps after the last logging step, still
    reach the loggers).

    The data module names its sources (``source_names``) and holds the bad samples found before training
    (``bad_samples``, a ``BadSampleReport``).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.local = torch.zeros(0, dtype=torch.float64)
        self.loading = BadSampleReport()
        self._last_step = -1
        self._logged: dict[str, float] = {}  # what rank 0 last gave the loggers

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.names = list(getattr(trainer.datamodule, "source_names", []))
        self.local = torch.zeros(len(self.names) + len(REASONS), dtype=torch.float64)
        self._last_step = trainer.global_step
        self._logged = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(batch, dict):
            for source in batch.get("sources") or []:
                if source in self.names:
                    self.local[self.names.index(source)] += 1
            reasons = list(REASONS)
            for sample_id, reason, message in batch.get("bad_samples") or []:
                self.local[len(self.names) + reasons.index(reason)] += 1
                self.loading.counts[reason] += 1
                examples = self.loading.examples.setdefault(reason, [])
                if len(examples) < self.loading.EXAMPLES:
                    examples.append(message)
        step = trainer.global_step
        if step != self._last_step and step % trainer.log_every_n_steps == 0:
            self._last_step = step
            self._log(trainer, step)

    def _totals(self, trainer: L.Trainer) -> torch.Tensor:
        # the same collective on every rank: all of them reach the same steps; on a copy, since the reduction
        # may happen in place and the local counts must stay this rank's own
        local = self.local.to(trainer.strategy.root_device, copy=True)
        return trainer.strategy.reduce(local, reduce_op="sum").cpu()

    def _metrics(self, trainer: L.Trainer) -> dict[str, float]:
        totals = self._totals(trainer)
        before = getattr(trainer.datamodule, "bad_samples", BadSampleReport()).counts
        metrics = {f"data/samples/{name}": float(totals[i]) for i, name in enumerate(self.names)}
        for position, reason in enumerate(REASONS):
            count = float(totals[len(self.names) + position]) + before.get(reason, 0)
            if count:
                metrics[f"data/bad_samples/{reason}"] = count
        return metrics

    def _log(self, trainer: L.Trainer, step: int, metrics: dict[str, float] | None = None) -> None:
        metrics = self._metrics(trainer) if metrics is None else metrics
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
            self._logged = metrics

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = self._metrics(trainer)
        if not trainer.is_global_zero:
            return
        if metrics and metrics != self._logged:
            self._log(trainer, trainer.global_step, metrics)
        lines = [f"  {name}: {int(metrics[f'data/samples/{name}'])} samples trained" for name in self.names]
        report = BadSampleReport()
        report.update(getattr(trainer.datamodule, "bad_samples", BadSampleReport()))
        report.update(self.loading)  # rank 0's examples; the counts below are all ranks'
        report.counts.clear()
        report.counts.update({reason: int(metrics.get(f"data/bad_samples/{reason}", 0)) for reason in REASONS})
        summary = "data summary:\n" + "\n".join(lines) + "\n" + report.summary("bad samples (all ranks)")
        log.info(summary)
