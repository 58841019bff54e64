"""DeepSpeed ZeRO-2 and ZeRO-3 on a CUDA GPU (Lightning's DeepSpeedStrategy refuses CPUs): the tiny model trains
both stages with the same per-step losses as without DeepSpeed, and the ZeRO-3 checkpoint exports. Skipped
without CUDA or deepspeed; run it on a GPU machine with ``python -m pytest -m gpu tests/test_deepspeed_gpu.py``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from llava_pl.checkpoint.sharded import is_deepspeed_checkpoint
from llava_pl.train import run
from tests.test_scaling_equivalence import STEPS, recorder, step_losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed runs on CUDA GPUs only"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                       reason="needs deepspeed: DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'"),
]

OVERRIDES = [
    "stage=[align,finetune]", "tasks=[]", "report=none", "monitor=none", "logger=none",
    *(f"stage.{name}.{key}={value}" for name in ("align", "finetune")
      for key, value in (("micro_batch_size", 1), ("global_batch_size", 4), ("max_steps", STEPS), ("max_length", 96))),
    "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=32-true",
]


def _train(compose_config, tmp_path: Path, strategy: str) -> Path:
    run_dir = tmp_path / strategy
    run(compose_config(*OVERRIDES, f"strategy={strategy}", f"run_dir={run_dir}", *recorder(run_dir / "losses.jsonl")))
    return run_dir


def test_zero2_and_zero3_train_as_without_deepspeed_and_export(compose_config, tmp_path) -> None:
    expected = step_losses(_train(compose_config, tmp_path, "auto") / "losses.jsonl")
    assert len(expected) == 2 * STEPS
    for strategy in ("deepspeed_zero2", "deepspeed_zero3"):
        run_dir = _train(compose_config, tmp_path, strategy)
        got = step_losses(run_dir / "losses.jsonl")
        assert got.keys() == expected.keys(), strategy
        for key, loss in got.items():
            assert loss == pytest.approx(expected[key], rel=1e-3), (strategy, key)
        assert is_deepspeed_checkpoint(run_dir / "finetune" / "checkpoints" / "last.ckpt")
        assert (run_dir / "finetune" / "projector.safetensors").is_file()
    from llava_pl.checkpoint.load import load_for_inference
    from llava_pl.export import export

    loaded = load_for_inference(tmp_path / "deepspeed_zero3" / "finetune" / "checkpoints" / "last.ckpt")
    out = export(loaded.model, loaded.tokenizer, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
