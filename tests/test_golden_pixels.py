"""llava_pl's image transforms give LLaVA-1.5's own pixel tensors (``shared/llava-golden``): ``pad`` those of
its finetune (``image_aspect_ratio pad``, fill ``int(x * 255)`` of the mean), ``crop`` those of its align (the
processor alone), for CLIP-L/336 loaded as llava_pl loads a vision preset's processor."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from llava_pl.data.images import ImageAspect, ImageTransform, pad_to_square
from llava_pl.to_wds import vision_transform
from tests.conftest import golden_path

IMAGES = ["0.png", "3.png"]
# LLaVA's name of each aspect → llava_pl's: LLaVA's default "square" is the processor alone, llava_pl's crop
ASPECTS = {"pad": "pad", "square": "crop"}
TOLERANCE = 1e-3  # normalised units; one uint8 level is 1 / 255 / std ≈ 0.015


@cache
def reference() -> dict:
    return json.loads(golden_path("pixels.json").read_text())


def golden_transform(aspect: ImageAspect) -> ImageTransform:
    """The processor of the golden folder, loaded as ``VisionEncoder.from_pretrained`` loads a checkpoint's."""
    return ImageTransform(AutoImageProcessor.from_pretrained(golden_path("clip-vit-large-patch14-336")), aspect)


def preset_transform(aspect: ImageAspect) -> ImageTransform:
    """``model/vision=clip-vit-l-14-336``'s, from the processor config the package carries for it."""
    golden_path("pixels.json")  # skip where the golden folder is absent
    return vision_transform("clip-vit-l-14-336", aspect)


TRANSFORMS = pytest.mark.parametrize("make_transform", [golden_transform, preset_transform],
                                     ids=["golden-config", "preset"])
CASES = pytest.mark.parametrize(("name", "llava_aspect"), [(n, a) for n in IMAGES for a in ASPECTS],
                                ids=[f"{n}-{a}" for n in IMAGES for a in ASPECTS])


def llava_tensor(name: str, llava_aspect: str, transform: ImageTransform) -> torch.Tensor:
    """LLaVA's tensor from its reference PNG: ``(png / 255 - mean) / std``, channels first, in float64."""
    entry = reference()["images"][name][llava_aspect]
    pixels = np.asarray(Image.open(golden_path(entry["file"])).convert("RGB"), dtype=np.float64)
    mean, std = (np.asarray(values, dtype=np.float64) for values in (transform.processor.image_mean,
                                                                     transform.processor.image_std))
    return torch.from_numpy(((pixels / 255 - mean) / std).transpose(2, 0, 1))


def assert_llava_pixels(got: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    assert tuple(got.shape) == tuple(expected.shape), where
    error = (got.double() - expected).abs()
    assert float(error.max()) <= TOLERANCE, f"{where}: {int((error > TOLERANCE).sum())} values differ, " \
                                            f"up to {float(error.max()):.4f}"


@TRANSFORMS
def test_processor_and_fill_are_llavas(make_transform) -> None:
    processor_values, transform = reference()["processor"], make_transform("pad")
    processor = transform.processor
    assert list(transform.fill) == reference()["pad_fill"] == [122, 116, 104]  # truncated; round gives 123, 117
    assert transform.preprocessing()["fill"] == [122, 116, 104]
    assert (list(processor.image_mean), list(processor.image_std)) == (processor_values["image_mean"],
                                                                       processor_values["image_std"])
    assert dict(processor.size) == processor_values["size"]
    assert dict(processor.crop_size) == processor_values["crop_size"]
    assert int(processor.resample) == processor_values["resample"]
    assert processor.rescale_factor == pytest.approx(processor_values["rescale_factor"], rel=1e-12)
    assert transform.fast is not None  # the fast path is the one training uses


@TRANSFORMS
@CASES
def test_transform_reproduces_llavas_pixels(make_transform, name, llava_aspect) -> None:
    transform = make_transform(ASPECTS[llava_aspect])
    image = Image.open(golden_path(f"images/{name}"))
    assert list(image.size) == reference()["images"][name]["size"]
    expected = llava_tensor(name, llava_aspect, transform)
    assert_llava_pixels(transform(image), expected, f"{name} {llava_aspect}: llava_pl's transform")
    # the processor's own code, after llava_pl's aspect step, agrees as well (the fast path reproduces it)
    before = pad_to_square(image.convert("RGB"), transform.fill) if transform.aspect == "pad" else image
    own = transform.processor(images=before, return_tensors="pt")["pixel_values"][0]
    assert_llava_pixels(own, expected, f"{name} {llava_aspect}: the processor itself")
    # pixels computed ahead (to_wds vision=...) are the reference PNG's
    assert np.array_equal(transform.pixels(image), np.asarray(Image.open(golden_path(
        reference()["images"][name][llava_aspect]["file"])).convert("RGB")))


@CASES
def test_sums_match_llavas_tensor(name, llava_aspect) -> None:
    """pixels.json's sums of LLaVA's float32 tensor: of the reference PNG (the README's formula) and of
    llava_pl's tensor."""
    entry = reference()["images"][name][llava_aspect]
    transform = golden_transform(ASPECTS[llava_aspect])
    ours = transform(Image.open(golden_path(f"images/{name}"))).double()
    for tensor in (llava_tensor(name, llava_aspect, transform), ours):
        assert list(tensor.shape) == entry["shape"]
        assert float(tensor.sum()) == pytest.approx(entry["sum"], rel=1e-6)
        assert float(tensor.abs().sum()) == pytest.approx(entry["abs_sum"], rel=1e-6)


def test_crop_and_pad_differ_on_these_images() -> None:
    """The two aspects are not the same tensor here (both images are far from square): the checks above tell
    them apart."""
    for name in IMAGES:
        image = Image.open(golden_path(f"images/{name}"))
        assert not torch.allclose(golden_transform("pad")(image), golden_transform("crop")(image), atol=0.1)
