"""The composed model: building from configs and from saved Hugging Face folders, selection of features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.model.llava import ImageCountError, LlavaModel
from llava_pl.model.projector import LinearProjector, MLPProjector
from llava_pl.model.vision import VisionEncoder

TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
         "image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "vocab_size": 64}


def _save_clip(folder: Path) -> CLIPModel:
    model = CLIPModel(CLIPConfig(vision_config=TOWER, text_config=TEXT))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_clip_from_pretrained_loads_the_vision_half(tmp_path: Path) -> None:
    full = _save_clip(tmp_path)
    encoder = VisionEncoder.from_pretrained(str(tmp_path))
    assert torch.equal(encoder.tower.embeddings.patch_embedding.weight, full.vision_model.embeddings.patch_embedding.weight)
    pixels = torch.randn(2, 3, 32, 32)
    hidden = full.vision_model(pixels, output_hidden_states=True).hidden_states
    features = encoder(pixels)
    assert features.shape == (2, 16, 32)  # CLS dropped
    torch.testing.assert_close(features, hidden[-2][:, 1:])  # penultimate layer, patches only


def test_cls_patch_keeps_cls_and_select_layer_is_honoured(tmp_path: Path) -> None:
    full = _save_clip(tmp_path)
    encoder = VisionEncoder.from_pretrained(str(tmp_path), select_layer=-1, select_feature="cls_patch")
    pixels = torch.randn(1, 3, 32, 32)
    hidden = full.vision_model(pixels, output_hidden_states=True).hidden_states
    assert encoder.num_image_tokens == 17
    torch.testing.assert_close(encoder(pixels), hidden[-1])


def test_siglip_from_pretrained_has_no_cls(tmp_path: Path) -> None:
    model = SiglipModel(SiglipConfig(vision_config=TOWER, text_config=TEXT))
    model.save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    encoder = VisionEncoder.from_pretrained(str(tmp_path))
    assert encoder.num_prefix_tokens == 0 and encoder.num_image_tokens == 16
    assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)
    with pytest.raises(ValueError, match="no CLS token"):
        VisionEncoder.from_pretrained(str(tmp_path), select_feature="cls_patch")


def test_projectors_are_sized_from_the_backbones() -> None:
    assert isinstance(LinearProjector(8, 16), torch.nn.Linear)
    mlp = MLPProjector(8, 16, depth=3)
    shapes = [tuple(layer.weight.shape) for layer in mlp if isinstance(layer, torch.nn.Linear)]
    assert shapes == [(16, 8), (16, 16), (16, 16)]
    assert sum(isinstance(layer, torch.nn.GELU) for layer in mlp) == 2


def test_llava_forward_with_mixed_batch(compose_config) -> None:
    from hydra.utils import instantiate

    from llava_pl.model.build import build_model

    cfg = compose_config()
    for step in cfg.data.prepare:
        instantiate(step)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer)
    assert model.projector[0].in_features == model.vision.hidden_size
    assert model.projector[-1].out_features == model.llm.config.hidden_size
    n = model.tokens_per_image
    input_ids = torch.tensor([[5, *[IMAGE_TOKEN_ID] * n, 6], [7, 8, *[0] * n]])
    size = model.vision.tower.config.image_size
    pixels = torch.randn(1, 3, size, size)
    out = model(input_ids, torch.ones_like(input_ids), pixels, torch.tensor([1, 0]), labels=input_ids.clamp(min=0))
    assert out["logits"].shape == (2, n + 2, len(tokenizer)) and torch.isfinite(out["loss"])
    with pytest.raises(ImageCountError, match="no images"):
        model(input_ids, torch.ones_like(input_ids))
