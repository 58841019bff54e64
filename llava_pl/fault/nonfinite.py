"""Detection of a non-finite loss or gradient norm before it reaches the weights, with the offending sample ids."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from llava_pl.fault.config import NonFinitePolicy

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm was NaN or infinite (the weights were not updated with it)."""


class NonFiniteGuard(Callback):
    """Checks each optimizer step, just before the optimizer runs: the loss of every micro-batch of the
    accumulation window and the norm of the accumulated gradients.

    ``stop`` raises ``NonFiniteError``; ``skip_step`` drops the gradients so that the optimizer leaves the
    weights and its moments as they were (the schedule still advances). Either way the sample ids go to the
    log: those of the micro-batches whose loss was not finite, else the whole window's.

    With ``16-mixed`` precision a non-finite gradient is routine (the gradient scaler skips that step and
    lowers its scale), so only the loss is checked and the scaler does the skipping.
    """

    def __init__(self, policy: NonFinitePolicy = "stop") -> None:
        self.policy = policy
        self._window: list[tuple[list[str], torch.Tensor | None]] = []
        self._ids: list[str] = []
        self.skipped_steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = [str(sample_id) for sample_id in batch.get("sample_ids", [])] if isinstance(batch, dict) else []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        # kept as a tensor: reading it here would wait for the device at every micro-batch
        self._window.append((self._ids, torch.isfinite(loss.detach()).all()))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        window, self._window = self._window, []
        bad_batches = [ids for ids, finite in window if finite is not None and not bool(finite)]
        scaled = str(trainer.precision).startswith("16")
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients) if gradients and not scaled else None
        bad_norm = norm is not None and not bool(torch.isfinite(norm))
        if not trainer.strategy.reduce_boolean_decision(bool(bad_batches) or bad_norm, all=False):
            return
        what = (f"loss in {len(bad_batches)} of {len(window)} micro-batch(es)" if bad_batches
                else f"gradient norm ({float(norm) if norm is not None else 'on another rank'})")
        ids = [sample_id for ids in (bad_batches or [ids for ids, _ in window]) for sample_id in ids]
        stage = getattr(getattr(pl_module, "stage", None), "name", "?")
        message = f"non-finite {what} at step {trainer.global_step} of stage {stage}; samples: {ids}"
        if self.policy == "stop":
            log.error(message)
            raise NonFiniteError(f"{message}. faults.on_nonfinite=skip_step would skip such steps instead")
        self.skipped_steps += 1
        log.warning(f"{message}; optimizer step skipped ({self.skipped_steps} so far)")
        if not scaled:
            optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer updates nothing
