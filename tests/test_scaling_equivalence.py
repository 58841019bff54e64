"""Scaling out changes nothing but speed: 2 processes (DDP, FSDP2 on gloo) train exactly as 1 process with the
same global batch, for both stages, and a checkpoint of either strategy resumes under the other on another
number of devices. Two multi-process runs serve every assertion; the rest runs in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from llava_pl.checkpoint.sharded import is_distcp_checkpoint, load_checkpoint
from llava_pl.train import run
from tests.conftest import CONF_DIR, small_overrides

STEPS = 3
# One sample per micro-batch, so every grouping of the global batch into micro-batches gives the same gradient;
# a global batch of 4 is 4 micro-batches on 1 process, 2 on each of 2.
COMMON = [
    "stage=[align,finetune]", "tasks=[]", "report=none", "monitor=none", "logger=none",
    "model.llm.model.config.num_hidden_layers=2", "model.vision.config.num_hidden_layers=2",
    *(f"stage.{name}.{key}={value}" for name in ("align", "finetune")
      for key, value in (("micro_batch_size", 1), ("global_batch_size", 4), ("max_steps", STEPS), ("max_length", 96))),
    "checkpoint.every_n_train_steps=2",
    "trainer.accelerator=cpu",
    # centring averages each process's first micro-batch, not one process's first: not part of the equivalence
    "model.center_projector=false",
]


def recorder(path: Path) -> list[str]:
    return ["+callbacks.losses._target_=tests.step_losses.StepLosses", f"+callbacks.losses.path={path}"]


def step_losses(path: Path) -> dict[tuple[str, int], float]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {(record["stage"], record["step"]): record["loss"] for record in records}


def assert_same_losses(got: dict, expected: dict) -> None:
    assert got and set(got) <= set(expected), (sorted(got), sorted(expected))
    for key, loss in got.items():
        assert loss == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key


def start_two_processes(data_dir: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``train.py`` on 2 gloo processes with the small overrides, its per-step losses recorded in
    ``run_dir/losses.jsonl`` and its output captured; ``finish`` waits for it."""
    small = [override for override in small_overrides(data_dir, run_dir) if not override.startswith("run_dir=")]
    command = [sys.executable, "train.py", *small, f"hydra.run.dir={run_dir}", *overrides, "trainer.devices=2",
               *recorder(run_dir / "losses.jsonl")]
    return subprocess.Popen(command, cwd=CONF_DIR.parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process: subprocess.Popen, name: str) -> str:
    """The output of a run ``start_two_processes`` started, once it has ended well."""
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, f"{name}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def two_process_runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One DDP and one FSDP2 run of 2 gloo processes each, started together."""
    root = tmp_path_factory.mktemp("two_processes")
    processes = {}
    for strategy in ("ddp", "fsdp"):
        run_dir = root / strategy
        # under FSDP with the default monitoring too: its rank-0-only sample generations must not hang the run
        monitoring = ["monitor=default", "peak_flops=none"] if strategy == "fsdp" else ["monitor=none"]
        common = [override for override in COMMON if override != "monitor=none"]
        processes[strategy] = start_two_processes(data_dir, run_dir, *common, *monitoring, f"strategy={strategy}")
    for strategy, process in processes.items():
        finish(process, strategy)
    yield {strategy: root / strategy for strategy in processes}


@pytest.fixture(scope="module")
def one_process_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("one_process")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*small_overrides(data_dir, run_dir), *COMMON, "trainer.devices=1",
                                          *recorder(run_dir / "losses.jsonl")])
    run(cfg)
    return run_dir


@pytest.fixture
def in_process_group() -> Iterator[None]:
    """An in-process run under DDP/FSDP makes a process group of one and sets rank variables: undo both."""
    environment = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


@pytest.mark.slow
def test_two_processes_train_as_one_for_both_stages(two_process_runs, one_process_run) -> None:
    expected = step_losses(one_process_run / "losses.jsonl")
    assert sorted(expected) == [(stage, step) for stage in ("align", "finetune") for step in range(STEPS)]
    for strategy, run_dir in two_process_runs.items():
        got = step_losses(run_dir / "losses.jsonl")
        assert set(got) == set(expected), strategy
        assert_same_losses(got, expected)
    # the losses move, so equal losses are not equal by accident of a frozen model
    assert expected[("finetune", 0)] != pytest.approx(expected[("finetune", STEPS - 1)], rel=1e-3)
    # FSDP wrote sharded folders; the projector files (the stages' completion markers) were written from full weights
    fsdp = two_process_runs["fsdp"]
    assert is_distcp_checkpoint(fsdp / "finetune" / "checkpoints" / "last.ckpt")
    assert len(list((fsdp / "finetune" / "checkpoints" / "last.ckpt").glob("*.distcp"))) == 2
    from safetensors.torch import load_file

    for stage in ("align", "finetune"):
        sharded = load_file(fsdp / stage / "projector.safetensors")
        single = load_file(one_process_run / stage / "projector.safetensors")
        assert sharded.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sharded_checkpoint_exports_and_consolidates_to_one_file(two_process_runs, one_process_run, tmp_path,
                                                                 monkeypatch) -> None:
    from transformers import LlavaForConditionalGeneration

    from llava_pl.checkpoint.load import load_for_inference
    from llava_pl.checkpoint.consolidate import consolidate
    from llava_pl.export import main as export_main

    folder = two_process_runs["fsdp"] / "finetune" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(sys, "argv", ["llava_pl.export", f"ckpt={folder}", f"out={tmp_path / 'hf'}"])
    export_main()  # python -m llava_pl.export ckpt=<the sharded folder> out=...
    exported = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    single = load_for_inference(one_process_run / "finetune" / "checkpoints" / "last.ckpt").model
    torch.testing.assert_close(exported.model.multi_modal_projector.linear_1.weight, single.projector[0].weight,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(exported.get_input_embeddings().weight, single.llm.get_input_embeddings().weight,
                               rtol=1e-4, atol=1e-6)

    one_file = torch.load(consolidate(folder, tmp_path / "one.ckpt"), map_location="cpu", weights_only=False)
    reference = torch.load(one_process_run / "finetune" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)
    assert one_file["state_dict"].keys() == reference["state_dict"].keys()
    assert one_file["global_step"] == reference["global_step"] == STEPS
    ours, theirs = one_file["optimizer_states"][0], reference["optimizer_states"][0]
    assert [group["params"] for group in ours["param_groups"]] == [group["params"] for group in theirs["param_groups"]]
    for index, state in theirs["state"].items():
        torch.testing.assert_close(ours["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-3, atol=1e-7)


def _resume(data_dir: Path, run_dir: Path, checkpoint: Path, strategy: str) -> dict:
    from hydra import compose, initialize_config_dir

    overrides = [o for o in COMMON if not o.startswith(("stage=", "stage.align."))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*small_overrides(data_dir, run_dir), *overrides, "stage=finetune",
                                          f"strategy={strategy}", "trainer.devices=1", f"ckpt_path='{checkpoint}'",
                                          *recorder(run_dir / "losses.jsonl")])
    run(cfg)
    return step_losses(run_dir / "losses.jsonl")


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_under_ddp_and_ddp_checkpoint_under_fsdp(two_process_runs, one_process_run, data_dir,
                                                                         tmp_path, in_process_group) -> None:
    expected = step_losses(one_process_run / "losses.jsonl")
    sharded = two_process_runs["fsdp"] / "finetune" / "checkpoints" / "epoch=0-step=2.ckpt"
    single_file = two_process_runs["ddp"] / "finetune" / "checkpoints" / "epoch=0-step=2.ckpt"
    assert is_distcp_checkpoint(sharded) and single_file.is_file()
    consolidated = load_checkpoint(sharded)  # what a process under DDP reads from the folder
    assert consolidated["global_step"] == 2 and consolidated["optimizer_states"][0]["state"]

    resumed = _resume(data_dir, tmp_path / "ddp_from_fsdp", sharded, "ddp")  # 2 FSDP shards -> 1 DDP process
    assert sorted(resumed) == [("finetune", 2)]
    assert_same_losses(resumed, expected)
    if dist.is_initialized():
        dist.destroy_process_group()
    resumed = _resume(data_dir, tmp_path / "fsdp_from_ddp", single_file, "fsdp")  # DDP file -> 1 FSDP process
    assert sorted(resumed) == [("finetune", 2)]
    assert_same_losses(resumed, expected)
