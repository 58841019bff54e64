"""Per stage, exactly the selected parts learn; frozen parts get no gradients and stay in eval mode."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.module import LlavaModule
from llava_pl.optim import parameter_groups
from llava_pl.stage import PARTS
from llava_pl.model.build import build_model
from llava_pl.train import selected_stages


@pytest.fixture
def built(compose_config):
    def _build(*overrides: str):
        cfg = compose_config(*overrides)
        tokenizer = instantiate(cfg.model.llm.tokenizer)
        return build_model(cfg.model, tokenizer), selected_stages(cfg)

    return _build


def _loss(module: LlavaModule) -> torch.Tensor:
    n = module.model.tokens_per_image
    input_ids = torch.tensor([[4, *[IMAGE_TOKEN_ID] * n, 5, 6, 7]])
    labels = torch.tensor([[-100] * (n + 1) + [5, 6, 7]])
    size = module.model.vision.tower.config.image_size
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "pixel_values": torch.randn(1, 3, size, size), "images_per_sample": torch.tensor([1])}
    return module(batch)["loss"]


@pytest.mark.parametrize(
    ("overrides", "trained"),
    [
        (["stage=align"], {"projector"}),
        (["stage=finetune", "experiment=none"], {"projector", "llm"}),
        (["stage=finetune", "stage.finetune.trains=[vision,projector,llm]"], {"vision", "projector", "llm"}),
    ],
    ids=["align", "finetune", "finetune-vision"],
)
def test_only_selected_parts_get_gradients(built, overrides, trained) -> None:
    model, (stage,) = built(*overrides)
    module = LlavaModule(model, stage)
    module.train()
    _loss(module).backward()
    for part in PARTS:
        parameters = list(getattr(model, part).named_parameters())
        with_grad = [name for name, p in parameters if p.grad is not None and p.grad.abs().sum() > 0]
        if part in trained:
            assert all(p.requires_grad for _, p in parameters), part
            assert with_grad, f"{part} should learn but got no gradient"
        else:
            assert not any(p.requires_grad for _, p in parameters), part
            assert not with_grad, f"{part} is frozen but {with_grad[:3]} got gradients"
            assert not any(m.training for m in getattr(model, part).modules()), f"{part} must stay in eval mode"
    assert "frozen" in module.parameter_table or trained == set(PARTS)


def test_optimizer_groups_exclude_frozen_parts_and_decay_only_matrices(built) -> None:
    model, (stage,) = built("stage=align")
    LlavaModule(model, stage)
    groups = parameter_groups([(p, getattr(model, p), 1e-3) for p in PARTS], weight_decay=0.1)
    assert {group["name"] for group in groups} == {"projector", "projector/no_decay"}
    for group in groups:
        dims = {parameter.ndim for parameter in group["params"]}
        assert dims == ({1} if group["name"].endswith("no_decay") else {2})
        assert group["weight_decay"] == (0.0 if group["name"].endswith("no_decay") else 0.1)
