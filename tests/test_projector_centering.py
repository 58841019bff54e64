"""model.center_projector: a fresh projector starts on mean-free vision features, once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import llava_pl.module
from llava_pl.model.centering import feature_sum, fold_input_mean
from llava_pl.model.projector import LinearProjector, MLPProjector
from llava_pl.train import run


@pytest.mark.parametrize("projector", [LinearProjector(16, 24), MLPProjector(16, 24, depth=2)])
def test_folding_the_mean_is_the_projector_on_centred_features(projector: nn.Module) -> None:
    torch.manual_seed(0)
    features, mean = torch.randn(5, 9, 16), torch.randn(16) * 10
    expected = projector(features - mean)
    fold_input_mean(projector, mean)
    torch.testing.assert_close(projector(features), expected, rtol=1e-5, atol=1e-4)


def test_a_sharded_first_layer_is_refused() -> None:
    projector = MLPProjector(16, 24)
    projector[0].weight = nn.Parameter(torch.empty(0))  # what a ZeRO-3 partitioned parameter looks like
    with pytest.raises(ValueError, match="sharded projector"):
        fold_input_mean(projector, torch.zeros(16))


def test_feature_sum_counts_every_position() -> None:
    class Vision(nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values.flatten(2).transpose(1, 2)  # (images, positions = H*W, channels)

    total, count = feature_sum(Vision(), torch.ones(2, 3, 4, 4))
    assert count == 2 * 16 and torch.equal(total, torch.full((3,), 32.0))


def _record_folds(monkeypatch) -> list[torch.Tensor]:
    means: list[torch.Tensor] = []

    def recording(projector: nn.Module, mean: torch.Tensor) -> None:
        means.append(mean.detach().clone())
        fold_input_mean(projector, mean)

    monkeypatch.setattr(llava_pl.module, "fold_input_mean", recording)
    return means


@pytest.mark.slow
def test_a_run_centres_its_fresh_projector_once_and_never_a_trained_one(compose_config, monkeypatch) -> None:
    means = _record_folds(monkeypatch)
    steps = ["stage.finetune.max_steps=2", "stage.finetune.micro_batch_size=8",
             "stage.finetune.global_batch_size=8", "evaluation=none", "model.center_projector=true"]
    align = ["stage.align.max_steps=2", "stage.align.micro_batch_size=8", "stage.align.global_batch_size=8"]
    cfg = compose_config(*steps, *align)
    run(cfg)
    assert len(means) == 1, "align centres the fresh projector; finetune inherits it and must not centre again"
    # the random tower's features on the demo's light images share one vector of norm ~13 (README)
    assert means[0].norm() > 5

    # finetune from the align stage's projector: that projector is trained, not fresh
    align_dir = Path(cfg.run_dir) / "align"
    means.clear()
    run(compose_config(*steps, "stage=finetune", f"model.projector_weights={align_dir}", "run_dir=" + str(
        Path(cfg.run_dir).parent / "from_align")))
    assert means == []

    # switched off: nothing is folded
    run(compose_config(*steps, *align, "model.center_projector=false",
                       "run_dir=" + str(Path(cfg.run_dir).parent / "off")))
    assert means == []
