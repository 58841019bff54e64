"""The image aspect is a stage's: LLaVA-1.5 crops to align and pads to finetune; ``data.image_aspect`` overrides
every stage; checkpoints carry the aspect they trained with; the demo's square images are the same either way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava_pl.checkpoint.load import load_for_inference
from llava_pl.data.images import ImageTransform, pad_fill
from llava_pl.data.options import stage_image_aspect
from llava_pl.to_wds import vision_transform
from llava_pl.train import selected_stages
from tests.data_helpers import processor
from tests.demo_checkpoint import demo_checkpoint  # noqa: F401  (a fixture)


def aspects(cfg) -> dict[str, str]:
    return {stage.name: stage_image_aspect(cfg.data, stage) for stage in selected_stages(cfg)}


def test_llava_recipe_crops_to_align_and_pads_to_finetune(compose_config) -> None:
    assert aspects(compose_config("experiment=none")) == {"align": "crop", "finetune": "pad"}
    assert aspects(compose_config()) == {"align": "crop", "finetune": "pad"}  # the demo keeps the recipe
    assert aspects(compose_config("stage=finetune_lora")) == {"finetune_lora": "pad"}
    assert aspects(compose_config("stage.align.image_aspect=pad")) == {"align": "pad", "finetune": "pad"}


def test_data_image_aspect_overrides_every_stage(compose_config) -> None:
    assert aspects(compose_config("data.image_aspect=resize")) == {"align": "resize", "finetune": "resize"}
    for data in ("llava", "scienceqa", "wds"):  # null in every data config: the stages decide
        cfg = compose_config(f"data={data}", shapes=False)
        assert cfg.data.image_aspect is None


def test_unknown_aspects_are_refused(compose_config) -> None:
    with pytest.raises(ValueError, match=r"stage align: image_aspect must be one of \['pad', 'crop', 'resize'\], "
                                         "got 'square'"):
        selected_stages(compose_config("stage=align", "stage.align.image_aspect=square"))
    cfg = compose_config("stage=align", "data.image_aspect=square")
    with pytest.raises(ValueError, match=r"data.image_aspect must be null \(each stage's own\) or one of"):
        stage_image_aspect(cfg.data, selected_stages(cfg)[0])
    with pytest.raises(ValueError, match="image aspect must be one of pad, crop, resize; got 'square'"):
        ImageTransform(processor(), "square")  # type: ignore[arg-type]


def test_pad_fill_truncates_the_mean_like_llava() -> None:
    clip = processor()
    assert pad_fill(clip) == (122, 116, 104)  # int(0.48145466 * 255) = 122, where round() gives 123
    wide = Image.new("RGB", (32, 8), (255, 255, 255))
    pixels = ImageTransform(clip, "pad").pixels(wide)
    assert tuple(pixels[0, 0]) == (122, 116, 104)  # the padded band above the image
    blank = ImageTransform(clip, "crop").blank()  # the blind control: the padding colour everywhere
    expected = (torch.tensor([122, 116, 104]) / 255 - torch.tensor(clip.image_mean)) / torch.tensor(clip.image_std)
    torch.testing.assert_close(blank[:, 0, 0], expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("vision", ["tiny_clip", "tiny_siglip"])
def test_demo_square_images_are_the_same_cropped_or_padded(vision) -> None:
    """The demo trains align with crop and finetune with pad on square images: nothing changes for it."""
    crop, pad = vision_transform(vision, "crop"), vision_transform(vision, "pad")
    rng = np.random.default_rng(0)
    for side in (96, 48):  # the demo's images, and the tests' small ones
        square = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        assert torch.equal(crop(square), pad(square))
    wide = Image.fromarray(rng.integers(0, 256, (40, 96, 3), dtype=np.uint8))
    assert not torch.equal(crop(wide), pad(wide))  # the aspects do differ where the image is not square


def test_inference_uses_the_recorded_aspect_and_pad_for_older_checkpoints(demo_checkpoint: Path, tmp_path) -> None:
    assert load_for_inference(demo_checkpoint).image_transform.aspect == "pad"  # a finetune checkpoint
    checkpoint = torch.load(demo_checkpoint, weights_only=False)
    checkpoint["hyper_parameters"]["image_aspect"] = "crop"  # as an align stage records it
    torch.save(checkpoint, tmp_path / "align.ckpt")
    assert load_for_inference(tmp_path / "align.ckpt").image_transform.aspect == "crop"
    del checkpoint["hyper_parameters"]["image_aspect"]  # written before the aspect was recorded
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert load_for_inference(tmp_path / "old.ckpt").image_transform.aspect == "pad"
