"""Evaluation over several processes: the questions split across ranks and put back in order, generation in
lockstep on an FSDP2-sharded model whose ranks' answers end at different steps, and a 2-process FSDP2 training
run whose evaluation (mid-run and at the end) scores what one process scores with the same weights."""

from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava_pl.eval.processes import Processes, interleave, split
from tests.conftest import CONF_DIR, small_overrides


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_split_pads_every_rank_to_as_many_batches_and_interleave_restores_the_order(world_size, batch_size) -> None:
    for count in range(0, 12):
        items = [f"q{index}" for index in range(count)]
        shares = [split(items, rank, world_size, lockstep=True) for rank in range(world_size)]
        batches = {-(-len(share.items) // batch_size) for share in shares}
        assert len(batches) == 1, (count, [share.items for share in shares])  # lockstep: same number of batches
        assert sum(share.real for share in shares) == count
        assert all(filler == items[0] for share in shares for filler in share.items[share.real:])
        assert interleave([share.items[: share.real] for share in shares]) == items
        free = [split(items, rank, world_size) for rank in range(world_size)]  # not sharded: no fillers
        assert [len(share.items) for share in free] == [share.real for share in free]
        assert interleave([share.items for share in free]) == items


def test_split_names_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2 is not within a world of 2 processes"):
        split([1, 2, 3], 2, 2)
    assert Processes().gather("x") == ["x"] and Processes().broadcast(5) == 5 and not Processes(0, 2).synced


def _generate_on_rank(rank: int, init_file: str, out_dir: str, max_new_tokens: tuple[int, int]) -> None:
    """One rank of a 2-process gloo group: the tiny model sharded per block with FSDP2, answering its own
    prompt in ``max_new_tokens[rank]`` steps (standing in for answers that end at different steps); then one
    training step on the same sharded model."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from llava_pl.distributed.fsdp import FSDP2Strategy, resharded_afterwards
    from tests.tiny_llava import tiny_llava

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = tiny_llava()
        model.llm_block_classes = (LlamaDecoderLayer,)
        reference = copy.deepcopy(model).eval()
        strategy = FSDP2Strategy()
        strategy._device_mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        strategy.shard(model, model.block_classes())
        model.eval()
        torch.manual_seed(rank)
        ids = torch.tensor([[1] + [-200] * model.tokens_per_image + [5 + rank, 6, 7]])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 16, 16),
                  "images_per_sample": torch.tensor([1]), "max_new_tokens": max_new_tokens[rank], "do_sample": False,
                  "eos_token_id": None, "pad_token_id": 0}
        with resharded_afterwards(model):
            tokens = model.generate(**inputs, synced_gpus=True)
        expected = reference.generate(**inputs)
        resharded = isinstance(model.llm.get_input_embeddings().weight, DTensor)
        model.train()
        batch = {"input_ids": ids, "pixel_values": inputs["pixel_values"], "images_per_sample": torch.tensor([1]),
                 "labels": ids.clamp(min=-100)}
        loss, expected_loss = model(**batch)["loss"], reference.train()(**batch)["loss"]
        loss.backward()
        torch.save({"tokens": tokens, "expected": expected, "resharded": resharded, "loss": loss.detach(),
                    "expected_loss": expected_loss.detach()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and transformers: ~40 s on 2 cores
def test_sharded_generation_runs_in_lockstep_when_ranks_finish_at_different_steps(tmp_path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_generate_on_rank, args=(rank, str(tmp_path / "init"), str(tmp_path), (2, 6)))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    hung = [worker for worker in workers if worker.is_alive()]
    for worker in hung:
        worker.kill()
    assert not hung, "a rank waited forever: generation did not keep the ranks in step"
    assert [worker.exitcode for worker in workers] == [0, 0]
    for rank, steps in enumerate((2, 6)):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["tokens"].shape[1] == steps  # rank 0 stopped stepping its own answer after 2 tokens
        assert torch.equal(result["tokens"], result["expected"])  # the unsharded model's greedy answer
        assert result["resharded"]  # the root unit's parameters are sharded again afterwards
        torch.testing.assert_close(result["loss"], result["expected_loss"])  # and training goes on as before


def _prediction_rows(path: Path) -> list[tuple[str, str]]:
    return [(row["key"], row["text"]) for row in map(json.loads, path.read_text().splitlines())]


def _run_overrides(benchmarks: Path) -> list[str]:
    """Finetune for 3 steps; the pope and shapes tasks at step 2 on 5 questions (an odd number: over 2 ranks one
    answers a filler) and at the end on 3."""
    return ["stage=finetune", "stage.finetune.micro_batch_size=2", "stage.finetune.global_batch_size=4",
            "stage.finetune.max_length=256", "stage.finetune.max_steps=3", "checkpoint.every_n_train_steps=2",
            "stage.finetune.lr=3e-5",  # the answers differ by question (more: all empty; less: all alike)
            "tasks=[pope,shapes]", "eval.every_n_steps=2", "eval.limit=5", "eval.batch_size=2",
            "eval.max_new_tokens=8",
            f"paths.eval_data={benchmarks}", "eval.end_limit=3", "report=none", "monitor=none",
            "model.center_projector=false"]


def _assert_evaluated_as_one_process(run_dir: Path, data_dir: Path, benchmarks: Path, out: Path,
                                     device: str = "cpu") -> None:
    """Step 2's answers and metrics (logged once) and the end-of-run table are what one process answering
    with the saved weights of those steps gives; training went on to step 3."""
    from hydra import compose, initialize_config_dir

    from llava_pl.checkpoint.load import load_for_inference
    from llava_pl.checkpoint.sharded import load_checkpoint
    from llava_pl.eval.at_end import evaluate_tasks
    from llava_pl.eval.processes import Processes
    from llava_pl.eval.runner import Runner
    from llava_pl.eval.task_config import selected_tasks

    step_dir = run_dir / "finetune" / "eval" / "step_2" / "pope"
    assert not list(step_dir.glob("predictions.rank*.jsonl"))
    metrics = json.loads((step_dir / "metrics.json").read_text())
    with (run_dir / "logs" / "finetune" / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row.get("eval/pope/f1")]
    assert [int(row["step"]) for row in rows] == [2]
    assert float(rows[0]["eval/pope/f1"]) == pytest.approx(metrics["f1"])
    checkpoints = run_dir / "finetune" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 3

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", f"paths.eval_data={benchmarks}",
                                          "tasks=[pope,shapes]", "eval.max_new_tokens=8"])
    (step_2,) = checkpoints.glob("*step=2*")
    loaded = load_for_inference(step_2)
    single = Runner(loaded.model.to(device), loaded.tokenizer, loaded.template, loaded.image_transform, batch_size=2)
    texts = set()
    for name, task in selected_tasks(cfg).items():
        one = single.run(name, task, out / "step_2" / name, limit=5)
        rows = _prediction_rows(one.predictions)
        assert len({key.removesuffix("/blank") for key, _ in rows}) == 5  # shapes: with the image and blanked
        assert len(one.answers) == len(rows) and all(one.answers.values())
        assert _prediction_rows(step_dir.parent / name / "predictions.jsonl") == rows
        texts |= {text for _, text in rows}
        if name == "pope":
            assert metrics == pytest.approx(one.metrics)
    assert len(texts) > 1  # some answers differ, so a reordered or mismatched gather would show

    final = load_for_inference(checkpoints / "last.ckpt")  # the run evaluates its final weights on the CPU
    runner = Runner(final.model, final.tokenizer, final.template, final.image_transform, batch_size=64)
    expected = evaluate_tasks(selected_tasks(cfg), runner, out / "end", limit=3, processes=Processes())
    assert json.loads((run_dir / "eval" / "metrics.json").read_text()) == expected
    for name in ("pope", "shapes"):
        assert _prediction_rows(run_dir / "eval" / name / "predictions.jsonl") == \
            _prediction_rows(out / "end" / name / "predictions.jsonl")
    end_rows = (run_dir / "eval" / "shapes" / "answers.jsonl").read_text()
    assert end_rows.count("\n") == 3 and end_rows == (out / "end" / "shapes" / "answers.jsonl").read_text()


@pytest.mark.slow
def test_fsdp_run_on_two_processes_evaluates_as_one_process_does(data_dir, tmp_path) -> None:
    """``tasks=[...]`` fire mid-run on 2 FSDP2 processes and the end-of-run evaluation runs on both; each
    scores what one process scores with the same weights."""
    from tests.eval_benchmarks import write_benchmarks

    benchmarks = write_benchmarks(tmp_path / "eval_data")
    run_dir = tmp_path / "run"
    base = [override for override in small_overrides(data_dir, run_dir) if not override.startswith("run_dir=")]
    command = [sys.executable, "train.py", *base, f"hydra.run.dir={run_dir}", *_run_overrides(benchmarks),
               "strategy=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]
    result = subprocess.run(command, cwd=CONF_DIR.parents[1], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _assert_evaluated_as_one_process(run_dir, data_dir, benchmarks, tmp_path / "one_process")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed runs on CUDA GPUs only")
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="needs deepspeed: DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'")
def test_zero3_evaluates_during_training_as_one_process_does(compose_config, data_dir, tmp_path) -> None:
    """ZeRO-3 partitions every parameter: generation gathers them module by module (one GPU here; NCCL puts
    no two ranks on one GPU)."""
    from llava_pl.train import run
    from tests.eval_benchmarks import write_benchmarks

    benchmarks = write_benchmarks(tmp_path / "eval_data")
    cfg = compose_config(*_run_overrides(benchmarks), "strategy=deepspeed_zero3", "trainer.accelerator=gpu",
                         "trainer.devices=1", "trainer.precision=32-true")
    run(cfg)
    _assert_evaluated_as_one_process(Path(cfg.run_dir), data_dir, benchmarks, tmp_path / "one_process", "cuda")
