"""The fused encoder: each tower gets the pixels its own processor made, features are concatenated per patch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava_pl.data.images import ImageTransform
from llava_pl.model.fused_vision import FusedImageProcessor, FusedVisionEncoder
from llava_pl.model.vision import VisionEncoder
from tests.families import TINY_IMAGE, tiny_tower

DINO, SIGLIP = "facebook/dinov2-with-registers-large", "google/siglip-so400m-patch14-384"


def _fused() -> FusedVisionEncoder:
    torch.manual_seed(0)
    return FusedVisionEncoder({"dino": tiny_tower(DINO, hidden_size=32), "siglip": tiny_tower(SIGLIP, hidden_size=48)})


def test_each_tower_sees_its_own_normalisation_and_features_concatenate_per_patch() -> None:
    fused = _fused()
    image = Image.effect_noise((80, 60), 64).convert("RGB")  # not square: both processors resize it their way
    pixels = fused.image_processor(images=image, return_tensors="pt")["pixel_values"]
    dino, siglip = fused.encoders["dino"], fused.encoders["siglip"]
    own = [tower.image_processor(images=image, return_tensors="pt")["pixel_values"] for tower in (dino, siglip)]
    assert pixels.shape == (1, 6, TINY_IMAGE, TINY_IMAGE)
    torch.testing.assert_close(pixels, torch.cat(own, dim=1))
    assert not torch.allclose(own[0], own[1])  # ImageNet vs 0.5 normalisation
    features = fused(pixels)
    assert features.shape == (1, 16, 32 + 48) and fused.hidden_size == 80 and fused.num_image_tokens == 16
    torch.testing.assert_close(features, torch.cat([dino(own[0]), siglip(own[1])], dim=-1))


def test_fused_processor_works_in_the_data_pipeline() -> None:
    fused = _fused()
    transform = ImageTransform(fused.image_processor, "pad")
    assert transform.fill == tuple(int(c * 255) for c in fused.encoders["dino"].image_processor.image_mean)
    assert transform(Image.new("RGB", (90, 40))).shape == (6, TINY_IMAGE, TINY_IMAGE)
    assert ImageTransform(fused.image_processor, "resize").blank().shape == (6, TINY_IMAGE, TINY_IMAGE)
    assert fused.block_classes == ()  # none named here; presets name one per tower


def test_towers_with_different_patch_grids_are_refused() -> None:
    with pytest.raises(ValueError, match=r"different numbers of image tokens \{'dino': 17, 'siglip': 16\}"):
        FusedVisionEncoder({"dino": tiny_tower(DINO, select_feature="cls_patch"), "siglip": tiny_tower(SIGLIP)})
    small = tiny_tower(SIGLIP)
    small.image_processor.size = {"height": 42, "width": 42}
    with pytest.raises(ValueError, match=r"different image sizes \[\(56, 56\), \(42, 42\)\]"):
        FusedImageProcessor([tiny_tower(DINO).image_processor, small.image_processor])
    with pytest.raises(ValueError, match="at least two encoders"):
        FusedVisionEncoder({"dino": tiny_tower(DINO)})


def test_pixels_of_one_tower_are_refused() -> None:
    with pytest.raises(ValueError, match=r"pixel_values have 3 channels; the fused towers take \[3, 3\]"):
        _fused()(torch.zeros(1, 3, TINY_IMAGE, TINY_IMAGE))


def test_dinov2_sees_its_processors_size_not_its_configs() -> None:
    """DINOv2 interpolates its position embeddings: its patch grid follows the processor (how the fused preset
    runs DINOv2 at 384 px although its config says 518 px)."""
    processor = {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 56},
                 "crop_size": {"height": 56, "width": 56}}
    config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 98, "patch_size": 14, "num_register_tokens": 4}
    encoder = VisionEncoder.from_config("dinov2_with_registers", config, processor)
    assert encoder.num_image_tokens == 16  # 56 / 14 squared, not (98 / 14) squared
    pixels = encoder.image_processor(images=Image.new("RGB", (70, 70)), return_tensors="pt")["pixel_values"]
    assert encoder(pixels).shape == (1, 16, 32)
