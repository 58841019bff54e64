"""The cheaper image path gives the image processor's own pixels, and stays out of the way where it cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, SiglipImageProcessor

from llava_pl.data.fast_image import fast_processing
from llava_pl.data.images import ImageTransform

PROCESSORS = pytest.mark.parametrize("processor", [
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
    SiglipImageProcessor(size={"height": 384, "width": 384}),
    CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
], ids=["clip-336", "siglip-384", "clip-crop"])
ASPECTS = pytest.mark.parametrize("aspect", ["pad", "crop", "resize"])


@PROCESSORS
@ASPECTS
def test_fast_path_matches_the_processor(processor, aspect) -> None:
    transform = ImageTransform(processor, aspect)
    assert transform.fast is not None
    rng = np.random.default_rng(1)
    for shape in ((480, 640, 3), (300, 200, 3), (41, 41, 3)):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        got = transform(image)
        transform.fast, fast = None, transform.fast
        expected = transform(image)  # the processor's own code
        transform.fast = fast
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_processors_it_does_not_reproduce_keep_their_own_code() -> None:
    class Shifted(CLIPImageProcessor):
        def __call__(self, *args, **kwargs):
            result = super().__call__(*args, **kwargs)
            result["pixel_values"] = result["pixel_values"] + 1
            return result

    processor = Shifted(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    assert fast_processing(processor) is None
    assert ImageTransform(processor).fast is None


@PROCESSORS
@ASPECTS
def test_pixels_computed_ahead_normalise_to_the_same_tensor(processor, aspect) -> None:
    transform = ImageTransform(processor, aspect)
    height, width = transform.preprocessing()["size"]
    rng = np.random.default_rng(2)
    for shape in ((480, 640, 3), (300, 200, 3)):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        pixels = transform.pixels(image)
        assert pixels.dtype == np.uint8 and pixels.shape == (height, width, 3)
        assert torch.equal(transform.normalise(pixels), transform(image))  # bit for bit


def test_preprocessing_names_every_step() -> None:
    clip = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    assert ImageTransform(clip).preprocessing() == {
        "size": [32, 32], "aspect": "pad", "fill": [122, 116, 104], "resize": {"shortest_edge": 40},
        "resample": "bicubic", "crop": [32, 32]}  # LLaVA's fill: int(x * 255) of CLIP's mean, not round
    assert ImageTransform(clip, "crop").preprocessing() == {
        "size": [32, 32], "aspect": "crop", "fill": None, "resize": {"shortest_edge": 40},
        "resample": "bicubic", "crop": [32, 32]}
    siglip = SiglipImageProcessor(size={"height": 24, "width": 24}, resample=Image.Resampling.BILINEAR)
    assert ImageTransform(siglip, "resize").preprocessing() == {
        "size": [24, 24], "aspect": "resize", "fill": None, "resize": {"height": 24, "width": 24},
        "resample": "bilinear", "crop": None}
