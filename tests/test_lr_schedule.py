"""The learning-rate schedule: linear warmup, then a cosine over the rest (LLaVA) or over a final share (WSD)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from llava_pl.optim import lr_schedule
from llava_pl.stage import StageConfig
from llava_pl.train import run


def _rates(total: int, warmup: int, decay: int | None) -> list[tuple[float, float]]:
    """Both groups' learning rates at each step 0..total (peaks 1e-3 and 2e-4)."""
    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": weights[:1], "lr": 1e-3}, {"params": weights[1:], "lr": 2e-4}])
    schedule = lr_schedule(optimizer, total, warmup, decay)
    rates = []
    for _ in range(total + 1):
        rates.append(tuple(group["lr"] for group in optimizer.param_groups))
        optimizer.step()
        schedule.step()
    return rates


def test_cosine_after_linear_warmup() -> None:
    rates = _rates(total=100, warmup=10, decay=None)
    assert [r[0] for r in rates[:11]] == pytest.approx([1e-3 * k / 10 for k in range(11)])
    for step in (10, 30, 55, 80, 100):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert rates[step][0] == pytest.approx(1e-3 * expected, abs=1e-12)
        assert rates[step][1] == pytest.approx(2e-4 * expected, abs=1e-12)  # every group on its own peak
    assert rates[55][0] == pytest.approx(5e-4)


def test_warmup_stable_decay() -> None:
    rates = _rates(total=100, warmup=10, decay=20)
    assert rates[5][0] == pytest.approx(5e-4)
    assert all(r == pytest.approx((1e-3, 2e-4)) for r in rates[10:81])  # constant at the peak until the decay
    for step in (85, 90, 95, 100):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 80) / 20))
        assert rates[step][0] == pytest.approx(1e-3 * expected, abs=1e-12)
    assert rates[90][1] == pytest.approx(1e-4)
    # the cosine schedule is already down to a quarter of its peak by step 80
    assert _rates(total=100, warmup=10, decay=None)[80][0] < 0.25e-3


def test_stage_decay_ratio(compose_config) -> None:
    cfg = compose_config("stage=finetune", "stage.finetune.decay_ratio=0.2")
    stage = StageConfig(**OmegaConf.to_container(cfg.stage.finetune, resolve=True))
    assert stage.decay_steps(1000) == 200 and stage.warmup_steps(1000) == 30
    default = compose_config("stage=finetune").stage.finetune
    assert default.decay_ratio is None
    assert StageConfig(**OmegaConf.to_container(default, resolve=True)).decay_steps(1000) is None


@pytest.mark.parametrize("ratio", [0.0, 0.98, -0.1])
def test_decay_ratio_out_of_range_names_the_key(compose_config, nothing_built, ratio: float) -> None:
    cfg = compose_config("stage=finetune", f"stage.finetune.decay_ratio={ratio}")
    with pytest.raises(ValueError, match=r"stage finetune: decay_ratio must be null or in \(0, 1 - warmup_ratio\]"):
        run(cfg)
    assert nothing_built(cfg)
