"""The sharded build on a CUDA GPU: ZeRO-3's partition on load (Lightning's DeepSpeedStrategy refuses CPUs) and
FSDP2's fill on the device train both stages with the per-step losses of the whole build. Skipped without CUDA
(and the ZeRO-3 case without deepspeed); run it with ``python -m pytest -m gpu tests/test_sharded_build_gpu.py``."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llava_pl.train import run
from tests.test_deepspeed_gpu import OVERRIDES
from tests.test_scaling_equivalence import assert_same_losses, recorder, step_losses
from tests.test_sharded_build import backbones, pretrained_overrides  # noqa: F401  (backbones: fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero3"])
def test_sharded_build_trains_as_the_whole_build(strategy, compose_config, backbones, tmp_path, capsys) -> None:
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed: DS_BUILD_OPS=0 pip install 'deepspeed>=0.19,<0.20'")
    losses = {}
    for sharded in (False, True):
        run_dir = tmp_path / f"sharded_{sharded}"
        run(compose_config(*OVERRIDES, *pretrained_overrides(backbones), "model.center_projector=false",
                           f"strategy={strategy}", f"strategy.build_sharded={sharded}", f"run_dir={run_dir}",
                           *recorder(run_dir / "losses.jsonl")))
        assert ("sharded build: each process read its shards of" in capsys.readouterr().out) is sharded
        losses[sharded] = step_losses(run_dir / "losses.jsonl")
    assert {stage for stage, _ in losses[True]} == {"align", "finetune"}
    assert_same_losses(losses[True], losses[False])
