"""Out-of-memory errors that say which settings reduce memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch

from llava_pl.stage import StageConfig

# CUDA/MPS raise OutOfMemoryError; the CPU allocator and some older paths raise a plain RuntimeError.
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in OOM_MARKERS)
    )


def memory_knobs(stage: StageConfig, trainer: L.Trainer) -> list[str]:
    """The settings that lower memory, with their current values, most effective first."""
    key = f"stage.{stage.name}"
    knobs = []
    if stage.micro_batch_size > 1:
        knobs.append(f"{key}.micro_batch_size={max(1, stage.micro_batch_size // 2)} (now {stage.micro_batch_size}; "
                     f"accumulation grows so that global_batch_size={stage.global_batch_size} stays)")
    if not stage.gradient_checkpointing:
        knobs.append(f"{key}.gradient_checkpointing=true (recomputes activations in the backward pass)")
    strategy = type(trainer.strategy).__name__
    knobs.append(f"a sharding strategy (strategy=..., e.g. FSDP or DeepSpeed ZeRO) instead of {strategy}: "
                 "parameters, gradients and optimizer state are split over the GPUs")
    precision = str(trainer.precision)
    if precision.startswith("32"):
        knobs.append(f"trainer.precision=bf16-mixed (now {precision})")
    knobs.append(f"{key}.max_length (now {stage.max_length}): shorter sequences")
    return knobs


@contextmanager
def explain_out_of_memory(stage: StageConfig, trainer: L.Trainer) -> Iterator[None]:
    """Re-raises an out-of-memory error from the block as ``torch.OutOfMemoryError`` naming the knobs."""
    try:
        yield
    except BaseException as error:
        if not is_out_of_memory(error):
            raise
        lines = "\n".join(f"  - {knob}" for knob in memory_knobs(stage, trainer))
        raise torch.OutOfMemoryError(
            f"out of memory at step {trainer.global_step} of stage {stage.name} ({error}).\n"
            f"Settings that reduce memory:\n{lines}"
        ) from error
