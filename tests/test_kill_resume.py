"""A real training process killed with SIGKILL (once in the middle of a checkpoint write, then at random
moments) resumes each time from a complete checkpoint and finishes."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llava_pl.train import run
from tests.conftest import CONF_DIR, small_overrides

MAX_STEPS = 30
KEEP = 2
OVERRIDES = [  # the requeue command's: the same every launch, resuming whatever the folder holds
    "ckpt_path=last", "stage=finetune", "tasks=[]", f"stage.finetune.max_steps={MAX_STEPS}",
    "stage.finetune.epochs=10", "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=8",
    "checkpoint.every_n_train_steps=2", f"checkpoint.save_top_k={KEEP}",
    "model.llm.model.config.num_hidden_layers=1", "model.llm.model.config.intermediate_size=256",  # small saves
]


def _command(data_dir: Path, run_dir: Path) -> list[str]:
    overrides = [o for o in small_overrides(data_dir, run_dir) if not o.startswith("run_dir=")]
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", *OVERRIDES]


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.002)


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_complete_checkpoint(compose_config, data_dir, tmp_path,
                                                                 caplog) -> None:
    run_dir = tmp_path / "run"
    folder = run_dir / "finetune" / "checkpoints"
    last = folder / "last.ckpt"
    command = _command(data_dir, run_dir)
    rng = random.Random(0)
    steps = [0]
    killed_mid_write = False
    for kill in range(3):
        before = _mtime(last)
        with (tmp_path / f"launch{kill}.log").open("w") as log:
            process = subprocess.Popen(command, cwd=CONF_DIR.parents[1], stdout=log, stderr=subprocess.STDOUT)
            try:
                if kill == 0:  # while a checkpoint is being written
                    _wait_until(lambda: any(folder.glob("*.partial")), process)
                else:  # some time after this launch's first save
                    _wait_until(lambda: _mtime(last) not in (None, before), process)
                    time.sleep(rng.uniform(0, 0.4))
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait()
        assert process.returncode == -signal.SIGKILL
        killed_mid_write |= any(folder.glob("*.partial"))
        for checkpoint in folder.glob("*.ckpt"):  # every file under a checkpoint name is complete
            assert "state_dict" in torch.load(checkpoint, map_location="cpu", weights_only=False), checkpoint
        steps.append(torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.exists() else 0)
        assert steps[-1] >= steps[-2], f"launch {kill} went back: {steps}"
    assert killed_mid_write  # the first kill did land in the middle of a write

    with caplog.at_level(logging.INFO):  # the last launch runs in this process (one interpreter start less)
        run(compose_config(*OVERRIDES))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == MAX_STEPS
    assert (run_dir / "finetune" / "projector.safetensors").is_file()
    assert not list(folder.glob("*.partial"))
    assert len(list(folder.glob("epoch=*.ckpt"))) == KEEP  # the most recent ones are kept, older ones removed
    assert steps[-1] > 0 and f"Restoring states from the checkpoint path at {last}" in caplog.text  # resumed
