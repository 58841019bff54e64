"""Out of memory on the first step: the error names the settings that reduce memory."""

from __future__ import annotations

import pytest
import torch

from llava_pl.fault.memory import is_out_of_memory
from llava_pl.train import run


def test_out_of_memory_on_the_first_step_names_the_knobs(compose_config) -> None:
    cfg = compose_config("stage=finetune", "tasks=[]", "stage.finetune.micro_batch_size=8",
                         "stage.finetune.global_batch_size=16",
                         "+callbacks.oom._target_=tests.fault_injection.RaiseOutOfMemory")
    with pytest.raises(torch.OutOfMemoryError) as raised:
        run(cfg)
    message = str(raised.value)
    assert "out of memory at step 0 of stage finetune" in message and "Tried to allocate 20.00 GiB" in message
    assert "stage.finetune.micro_batch_size=4 (now 8; accumulation grows so that global_batch_size=16 stays)" in message
    assert "stage.finetune.gradient_checkpointing=true" in message
    assert "a sharding strategy (strategy=" in message
    assert "trainer.precision=bf16-mixed (now 32-true)" in message
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)  # the original is kept


def test_what_counts_as_out_of_memory() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 81920000000 bytes"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
