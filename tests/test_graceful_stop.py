"""SIGTERM/SIGUSR1: a checkpoint at the next optimizer-step boundary, the requeue exit status, and a resumed
run that logs exactly the losses of an uninterrupted one."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llava_pl.fault.config import FaultConfig
from llava_pl.fault.preemption import TrainingPreempted
from llava_pl.train import run
from tests.conftest import CONF_DIR, small_overrides

REQUEUE = FaultConfig.requeue_exit_code
COMMON = [
    "stage=finetune", "tasks=[]", "stage.finetune.max_steps=10", "stage.finetune.epochs=3",
    "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=8",  # accumulation 2, 6 steps an epoch
]


def _losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "finetune" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_exits_for_requeue_and_resumes_identically(compose_config, data_dir,
                                                                                  tmp_path) -> None:
    whole = compose_config(*COMMON, f"run_dir={tmp_path / 'whole'}")
    run(whole)
    expected = _losses(tmp_path / "whole")
    assert len(expected) == 10

    run_dir = tmp_path / "preempted"
    overrides = [o for o in small_overrides(data_dir, run_dir) if not o.startswith("run_dir=")]
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", *COMMON,
               "checkpoint.every_n_train_steps=2",  # the first periodic checkpoint says training is under way
               "+callbacks.slow._target_=tests.fault_injection.SlowSteps", "+callbacks.slow.seconds=0.25"]
    process = subprocess.Popen(command, cwd=CONF_DIR.parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 120
    while not list((run_dir / "finetune" / "checkpoints").glob("epoch=*.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == REQUEUE, output[-3000:]
    assert "stopping on SIGTERM after step" in output
    saved = _checkpoint(run_dir)
    stopped_at = saved["global_step"]
    assert 2 <= stopped_at < 10
    loop = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert loop["processed"] == 2 * stopped_at  # at a boundary: no half-accumulated step
    assert not (run_dir / "finetune" / "projector.safetensors").exists()  # the stage is not marked complete
    before = _losses(run_dir)
    assert sorted(before) == list(range(stopped_at))  # every finished step was logged

    run(compose_config(*COMMON, f"run_dir={run_dir}", "ckpt_path=last"))
    after = _losses(run_dir)  # metrics.csv keeps the first launch's rows and adds the resumed launch's
    assert sorted(after) == list(range(10)) and {step: after[step] for step in before} == before
    for step, loss in after.items():
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"


def test_sigusr1_mid_accumulation_waits_for_the_step_boundary(compose_config, tmp_path) -> None:
    original = signal.getsignal(signal.SIGUSR1)
    cfg = compose_config(*COMMON, "checkpoint.every_n_train_steps=0",
                         "+callbacks.signal._target_=tests.fault_injection.SendSignal",
                         "+callbacks.signal.batch_index=4", "+callbacks.signal.name=SIGUSR1")  # 1st of step 3's two
    with pytest.raises(TrainingPreempted) as stopped:
        run(cfg)
    assert stopped.value.code == REQUEUE
    saved = _checkpoint(Path(cfg.run_dir))
    assert saved["global_step"] == 3  # not 2: micro-batch 5 completed step 3 first
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 6
    assert signal.getsignal(signal.SIGUSR1) is original  # the handlers are the caller's again
