"""A NaN injected into one batch: ``stop`` raises before the weights change, ``skip_step`` trains on; both log the
batch's sample ids. Without the guard the NaN reaches the weights and every later loss."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch

import llava_pl.train
from llava_pl.fault.nonfinite import NonFiniteError
from llava_pl.train import run
from tests import fault_injection

POISONED_BATCH = 4  # the first micro-batch of step 3 (accumulation 2)
COMMON = [
    "stage=finetune", "tasks=[]", "stage.finetune.max_steps=6", "stage.finetune.micro_batch_size=4",
    "stage.finetune.global_batch_size=8", "checkpoint.every_n_train_steps=0",
    "+callbacks.nan._target_=tests.fault_injection.InjectNonFinite", f"+callbacks.nan.batch_index={POISONED_BATCH}",
]


def _losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


def _final_weights_finite(run_dir: Path) -> bool:
    state = torch.load(run_dir / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


def test_stop_raises_with_the_sample_ids_before_the_update(compose_config, caplog) -> None:
    cfg = compose_config(*COMMON)  # faults.on_nonfinite defaults to stop
    with caplog.at_level(logging.ERROR, logger="llava_pl"), pytest.raises(NonFiniteError) as raised:
        run(cfg)
    ids = fault_injection.INJECTED_IDS
    assert len(ids) == 4
    assert "non-finite loss in 1 of 2 micro-batch(es) at step 2" in str(raised.value)
    assert all(sample_id in caplog.text for sample_id in ids)  # the ids are in the log, not only the exception
    assert not (Path(cfg.run_dir) / "finetune" / "projector.safetensors").exists()


@pytest.mark.slow
def test_skip_step_trains_on_and_without_the_guard_the_nan_spreads(compose_config, tmp_path, caplog,
                                                                   monkeypatch) -> None:
    with caplog.at_level(logging.WARNING, logger="llava_pl"):
        run(compose_config(*COMMON, "faults.on_nonfinite=skip_step", f"run_dir={tmp_path / 'skip'}"))
    losses = _losses(tmp_path / "skip")
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses.values())  # (a step logs its last
    # micro-batch's loss; the poisoned one was the first of step 2)
    assert _final_weights_finite(tmp_path / "skip")
    assert "optimizer step skipped" in caplog.text
    assert all(sample_id in caplog.text for sample_id in fault_injection.INJECTED_IDS)

    # the unprotected path: the same run without the guard
    monkeypatch.setattr(llava_pl.train, "fault_callbacks", lambda faults, path: [])
    run(compose_config(*COMMON, f"run_dir={tmp_path / 'unguarded'}"))
    unguarded = _losses(tmp_path / "unguarded")
    assert all(math.isnan(loss) for step, loss in unguarded.items() if step >= 3)  # after the poisoned update
    assert not _final_weights_finite(tmp_path / "unguarded")


def test_an_infinite_gradient_norm_names_the_whole_window(compose_config, caplog) -> None:
    cfg = compose_config(*COMMON[:-2], "+callbacks.grad._target_=tests.fault_injection.PoisonGradient",
                         "+callbacks.grad.batch_index=1")  # the losses stay finite
    with caplog.at_level(logging.ERROR, logger="llava_pl"), \
            pytest.raises(NonFiniteError, match=r"gradient norm \(inf\) at step 0"):
        run(cfg)
    logged = caplog.text.split("samples: ")[1]
    assert logged.count("train_") == 8  # both micro-batches of the step: a norm cannot tell which one
