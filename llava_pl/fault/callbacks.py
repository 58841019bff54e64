"""The fault-handling callbacks of one training stage."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from llava_pl.fault.config import FaultConfig
from llava_pl.fault.nonfinite import NonFiniteGuard
from llava_pl.fault.preemption import GracefulStop


def fault_callbacks(faults: FaultConfig, checkpoint_path: str | Path) -> list[Callback]:
    """Graceful stop (saving to ``checkpoint_path``, the stage's ``last.ckpt``) and the non-finite guard."""
    return [GracefulStop(checkpoint_path, faults.signals), NonFiniteGuard(faults.on_nonfinite)]
