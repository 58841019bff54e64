"""Resuming on another number of devices: the loop's and the loader's positions are counted in micro-batches
per rank, so a checkpoint written with accumulation ``a`` (global batch / (micro batch x world size)) is
translated to the accumulation ``b`` of the resuming run before Lightning reads it."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

ACCUMULATION_KEY = "accumulate_grad_batches"


def _rescaled(progress: dict[str, int], saved: int, now: int, where: str) -> dict[str, int]:
    """Shifts every counter by the micro-batches the finished optimizer steps take now minus then (``completed``
    lags ``processed`` by the batch being saved, so a shift rather than a ratio)."""
    steps, partial = divmod(progress["processed"], saved)
    if partial:
        raise ValueError(f"the checkpoint was written {partial} micro-batch(es) into an accumulation window ({where}); "
                         "it resumes only with the accumulation it was written with")
    shift = steps * (now - saved)
    return {key: value + shift if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in progress.items()}


def rescale_positions(checkpoint: dict[str, Any], now: int) -> None:
    """Translates ``checkpoint``'s positions (in place) from its accumulation to ``now``."""
    saved = checkpoint.get(ACCUMULATION_KEY)
    if saved is None or saved == now or "loops" not in checkpoint:
        return
    loop = checkpoint["loops"]["fit_loop"]
    progress = loop["epoch_loop.batch_progress"]
    for counters in ("total", "current"):
        progress[counters] = _rescaled(progress[counters], saved, now, f"batch_progress.{counters}")
    for state in loop.get("state_dict", {}).get("combined_loader", []):
        if isinstance(state, dict) and "batches_done" in state:
            state["batches_done"] = _rescaled({"processed": state["batches_done"]}, saved, now, "loader")["processed"]


class ResumeOnAnyWorldSize(Callback):
    """Records the accumulation in every checkpoint and translates a loaded checkpoint's positions to this run's."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[ACCUMULATION_KEY] = trainer.accumulate_grad_batches

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        rescale_positions(checkpoint, trainer.accumulate_grad_batches)
