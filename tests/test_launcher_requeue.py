"""The time-limit signal of each SLURM launcher stops the run gracefully: submitit's (``hydra/launcher=slurm``)
and the one ``scripts/slurm/train.sbatch`` asks SLURM for. End to end through submitit's local executor: the
job saves at a step boundary, submitit requeues it, and the requeued job resumes with the losses of an
uninterrupted run."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from llava_pl.fault.config import FaultConfig
from llava_pl.train import run
from tests.conftest import CONF_DIR, small_overrides

submitit = pytest.importorskip("submitit", reason="needs hydra-submitit-launcher: pip install -e '.[slurm]'")

SBATCH = CONF_DIR.parents[1] / "scripts" / "slurm" / "train.sbatch"
COMMON = [
    "stage=finetune", "tasks=[]", "stage.finetune.max_steps=10", "stage.finetune.epochs=3",
    "stage.finetune.micro_batch_size=4", "stage.finetune.global_batch_size=8",  # accumulation 2
]


def _signal_option(script: str) -> tuple[signal.Signals, int]:
    found = re.search(r"^#SBATCH --signal=(?:B:)?(\w+)@(\d+)", script, re.MULTILINE)
    assert found, "no #SBATCH --signal line"
    return signal.Signals["SIG" + found.group(1)], int(found.group(2))


def test_every_launchers_time_limit_signal_is_a_stop_signal(tmp_path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    stop_signals = FaultConfig.from_cfg(cfg).signals
    assert stop_signals == FaultConfig().signals
    # what submitit's SLURM executor writes into the job's sbatch file for this launcher config
    submitted = submitit.slurm.slurm._make_sbatch_string(command="python -u -m submitit.core._submit x",
                                                         folder=tmp_path,
                                                         signal_delay_s=cfg.hydra.launcher.signal_delay_s)
    assert _signal_option(submitted) == (signal.SIGUSR2, 120)
    assert signal.SIGUSR2 in stop_signals and submitit.JobEnvironment._usr_sig() == signal.SIGUSR2
    script = SBATCH.read_text()
    sbatch_signal, _ = _signal_option(script)
    assert sbatch_signal in stop_signals
    assert f'"$status" -eq {FaultConfig.requeue_exit_code} ]' in script and "--requeue" in script


def _losses(path: Path) -> dict[int, float]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {record["step"]: record["loss"] for record in records}


@pytest.mark.slow
def test_submitit_time_limit_signal_checkpoints_requeues_and_resumes_identically(compose_config, data_dir,
                                                                                 tmp_path) -> None:
    whole = tmp_path / "whole_losses.jsonl"
    run(compose_config(*COMMON, f"run_dir={tmp_path / 'whole'}",
                       "+callbacks.losses._target_=tests.step_losses.StepLosses", f"+callbacks.losses.path={whole}"))
    expected = _losses(whole)
    assert sorted(expected) == list(range(10))

    # hydra/launcher=submitit_local runs the job as hydra/launcher=slurm does on a cluster (the same launcher
    # class, submitit's job process and signal handlers), its controller restarting a job that requeues. The
    # job sends itself the time-limit signal mid-step, as the controller (or slurmstepd) delivers it.
    sweep = tmp_path / "sweep"
    losses = tmp_path / "losses.jsonl"
    overrides = [o for o in small_overrides(data_dir, sweep) if not o.startswith("run_dir=")]
    command = [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
               "hydra.launcher.timeout_min=30", *overrides, *COMMON, "ckpt_path=last",
               "checkpoint.every_n_train_steps=0",  # the only checkpoint is the one the signal asks for
               "+callbacks.losses._target_=tests.step_losses.StepLosses", f"+callbacks.losses.path={losses}",
               "+callbacks.signal._target_=tests.fault_injection.SendSignal", "+callbacks.signal.name=SIGUSR2",
               "+callbacks.signal.batch_index=4"]  # the first micro-batch of step 3's two
    finished = subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=600)
    logs = "\n".join(path.read_text() for path in sweep.rglob("*") if path.suffix in (".out", ".err", ".log"))
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-3000:] + logs[-3000:]

    assert "stopping on SIGUSR2 after step 3" in logs  # the step boundary after the signal, not mid-step
    assert "handing SIGUSR2 to the launcher's handler" in logs and "Requeued job" in logs  # submitit requeued
    assert logs.count("Starting with JobEnvironment") == 2  # the first launch and the requeued one
    run_dir = sweep / "0"
    assert sorted(path.name for path in sweep.iterdir() if not path.name.startswith(".")) == ["0", "multirun.yaml"]
    assert f"Restoring states from the checkpoint path at {run_dir / 'finetune' / 'checkpoints' / 'last.ckpt'}" in logs
    assert (run_dir / "finetune" / "projector.safetensors").is_file()  # the requeued job finished the stage
    resumed = _losses(losses)
    assert sorted(resumed) == list(range(10))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"
