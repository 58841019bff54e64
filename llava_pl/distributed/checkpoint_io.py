"""Checkpoint IO that also reads sharded checkpoints, so a run saved under FSDP or ZeRO resumes under DDP or on
one device (and, through the strategy's own loader, FSDP resumes from any checkpoint at any world size)."""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH

from llava_pl.distributed.consolidate import is_sharded_checkpoint, load_checkpoint, refuse_deepspeed_resume
from llava_pl.fault.checkpoint_io import AtomicCheckpointIO


class ShardAwareCheckpointIO(AtomicCheckpointIO):
    """Atomic saves (``AtomicCheckpointIO``); loads consolidate a sharded folder in memory first."""

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if is_sharded_checkpoint(path):
            refuse_deepspeed_resume(path)
            return load_checkpoint(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
