"""model.center_projector: a fresh projector reads mean-free vision features, centred once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import llava_pl.module
from llava_pl.model.centering import feature_sum, set_input_center
from llava_pl.model.projector import LinearProjector, MLPProjector
from llava_pl.checkpoint.projector_file import load_projector, save_projector
from llava_pl.train import run


def _fresh(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return LinearProjector(16, 24) if kind == "linear" else MLPProjector(16, 24, depth=2)


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
def test_a_centred_projector_computes_the_uncentred_one_on_centred_features(kind: str) -> None:
    projector = _fresh(kind)
    features, mean = torch.randn(5, 9, 16), torch.randn(16) * 10
    expected = projector(features - mean)
    set_input_center(projector, mean)
    torch.testing.assert_close(projector(features), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
def test_the_centre_holds_while_the_first_weight_learns(kind: str) -> None:
    """An update of the first weight must not move every image token by ``dW @ mean`` (what folding the mean
    into the first bias would do): the mean feature's token stays what it was."""
    projector, mean = _fresh(kind), torch.randn(16) * 10
    set_input_center(projector, mean)
    before = projector(mean).detach()
    first = projector if kind == "linear" else projector[0]
    with torch.no_grad():
        first.weight.add_(torch.randn_like(first.weight))
    torch.testing.assert_close(projector(mean), before)


def test_the_centre_travels_with_the_projector_file(tmp_path: Path) -> None:
    projector, mean = _fresh("mlp2x_gelu"), torch.randn(16)
    set_input_center(projector, mean)
    loaded = MLPProjector(16, 24, depth=2)
    load_projector(loaded, save_projector(projector, tmp_path / "projector.safetensors"))
    assert torch.equal(loaded.input_center, mean)


def test_a_file_without_a_centre_loads_uncentred(tmp_path: Path) -> None:
    projector = _fresh("mlp2x_gelu")
    state = {name: tensor for name, tensor in projector.state_dict().items() if name != "input_center"}
    save_file(state, str(tmp_path / "old.safetensors"))
    loaded = MLPProjector(16, 24, depth=2)
    set_input_center(loaded, torch.ones(16))
    load_projector(loaded, tmp_path / "old.safetensors")
    assert torch.equal(loaded.input_center, torch.zeros(16))
    torch.testing.assert_close(loaded[0].weight, projector[0].weight)


def test_a_sharded_first_layer_is_refused() -> None:
    projector = MLPProjector(16, 24)
    projector[0].weight = nn.Parameter(torch.empty(0))  # what a ZeRO-3 partitioned parameter looks like
    with pytest.raises(ValueError, match="sharded projector"):
        set_input_center(projector, torch.zeros(16))


def test_feature_sum_counts_every_position() -> None:
    class Vision(nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values.flatten(2).transpose(1, 2)  # (images, positions = H*W, channels)

    total, count = feature_sum(Vision(), torch.ones(2, 3, 4, 4))
    assert count == 2 * 16 and torch.equal(total, torch.full((3,), 32.0))


def _record_centring(monkeypatch) -> list[torch.Tensor]:
    means: list[torch.Tensor] = []

    def recording(projector: nn.Module, mean: torch.Tensor) -> None:
        means.append(mean.detach().clone())
        set_input_center(projector, mean)

    monkeypatch.setattr(llava_pl.module, "set_input_center", recording)
    return means


@pytest.mark.slow
def test_a_run_centres_its_fresh_projector_once_and_never_a_trained_one(compose_config, monkeypatch) -> None:
    means = _record_centring(monkeypatch)
    steps = ["stage.finetune.max_steps=2", "stage.finetune.micro_batch_size=8",
             "stage.finetune.global_batch_size=8", "tasks=[]", "model.center_projector=true"]
    align = ["stage.align.max_steps=2", "stage.align.micro_batch_size=8", "stage.align.global_batch_size=8"]
    cfg = compose_config(*steps, *align)
    run(cfg)
    assert len(means) == 1, "align centres the fresh projector; finetune inherits it and must not centre again"
    # the random tower's features on the demo's light images share one vector of norm ~13 (README)
    assert means[0].norm() > 5

    # the centre is handed on in the align stage's projector file
    align_dir = Path(cfg.run_dir) / "align"
    torch.testing.assert_close(load_file(str(align_dir / "projector.safetensors"))["input_center"], means[0])

    # finetune from the align stage's projector: that projector is trained, not fresh
    means.clear()
    run(compose_config(*steps, "stage=finetune", f"model.projector_weights={align_dir}", "run_dir=" + str(
        Path(cfg.run_dir).parent / "from_align")))
    assert means == []

    # switched off: nothing is centred
    run(compose_config(*steps, *align, "model.center_projector=false",
                       "run_dir=" + str(Path(cfg.run_dir).parent / "off")))
    assert means == []
