"""Lightning's checkpoint plugin for llava_pl: every save atomic (``last.ckpt`` included), every strategy's
checkpoint loadable.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into memory and then writes it through
an fsspec transaction whose temporary file lives in the system temp folder; when that folder is on another
file system than the run (the usual case on clusters), the final step is a copy into the target path,
which a kill can leave truncated. This plugin streams ``torch.save`` into ``<name>.partial`` beside the
target, fsyncs and renames.

Loading consolidates a sharded folder (FSDP, ZeRO) in memory first, so a run saved under FSDP or ZeRO resumes
under DDP or on one device (and, through the strategy's own loader, FSDP resumes from any checkpoint at any
world size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from llava_pl.checkpoint.atomic import atomic_path
from llava_pl.checkpoint.sharded import is_sharded_checkpoint, load_checkpoint, refuse_deepspeed_resume

DISK_FULL_HINT = (
    "Free space, keep fewer checkpoints (checkpoint.save_top_k) or move the run (hydra.run.dir), then resume "
    "with ckpt_path=last."
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs, ``s3://``…, keep Lightning's path) and
    whose loads also read sharded checkpoint folders."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(Path(path), hint=DISK_FULL_HINT) as partial, partial.open("wb") as file:
            torch.save(checkpoint, file)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if is_sharded_checkpoint(path):
            refuse_deepspeed_resume(path)
            return load_checkpoint(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
