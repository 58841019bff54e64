"""Image loading and preprocessing: LLaVA's aspect handling, then the encoder's own image processor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BaseImageProcessor

from llava_pl.common.images import IMAGE_ASPECTS, ImageAspect, input_size
from llava_pl.data.fast_image import fast_processing
from llava_pl.errors import ConfigError, DataError


def pad_fill(processor: BaseImageProcessor) -> tuple[int, int, int]:
    """LLaVA-1.5's padding colour, ``tuple(int(x * 255) for x in image_mean)``: truncated, not rounded (CLIP's
    mean gives (122, 116, 104))."""
    return tuple(int(channel * 255) for channel in processor.image_mean)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centres the image on a square canvas of the given colour (LLaVA-1.5's ``pad``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class ImageTransform:
    """PIL image → normalised pixel tensor ``(C, H, W)``.

    Args:
        processor: the vision encoder's Hugging Face image processor.
        aspect: ``pad`` pads to a square with ``pad_fill`` before processing (LLaVA-1.5's finetune,
            ``image_aspect_ratio pad``); ``crop`` leaves the image to the processor alone (LLaVA-1.5's align: for
            CLIP, short side to the input size, then a centre crop); ``resize`` stretches the image to the
            encoder's input size, whatever its aspect.
    """

    def __init__(self, processor: BaseImageProcessor, aspect: ImageAspect = "pad") -> None:
        if aspect not in IMAGE_ASPECTS:
            raise ConfigError(f"image aspect must be one of {', '.join(IMAGE_ASPECTS)}; got {aspect!r}")
        self.processor = processor
        self.aspect = aspect
        self.fill = pad_fill(processor)
        self.fast = fast_processing(processor)  # the processor's own steps, cheaper, where it reproduces them

    def _aspect(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.aspect == "pad":
            return pad_to_square(image, self.fill)
        if self.aspect == "crop":
            return image
        height, width = input_size(self.processor)
        return image.resize((width, height), Image.Resampling.BICUBIC)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self._aspect(image)
        if self.fast is not None:
            return self.fast(image)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def preprocessing(self) -> dict[str, Any] | None:
        """Every step before rescaling and normalising, as plain values (the aspect step, then the processor's
        resize and crop); ``None`` for a processor whose steps llava_pl does not reproduce exactly."""
        if self.fast is None:
            return None
        fill = list(self.fill) if self.aspect == "pad" else None
        return {"size": list(input_size(self.processor)), "aspect": self.aspect, "fill": fill,
                **self.fast.resize_rule()}

    def require_exact(self) -> dict[str, Any]:
        """``preprocessing()``; ``ValueError`` for a processor whose steps llava_pl does not reproduce exactly, so
        that its pixels cannot be computed ahead."""
        preprocessing = self.preprocessing()
        if preprocessing is None:
            raise ValueError(f"{type(self.processor).__name__}: llava_pl does not reproduce this image processor's "
                             "steps exactly, so its pixels cannot be computed ahead")
        return preprocessing

    def pixels(self, image: Image.Image) -> np.ndarray:
        """``(H, W, 3)`` uint8: the image after ``preprocessing()``, which ``normalise`` turns into this
        transform's tensor."""
        if self.fast is None:
            self.require_exact()
        return self.fast.resize_crop(self._aspect(image))

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """The tensor of pixels that ``pixels`` computed (bit for bit what ``__call__`` gives the image)."""
        return self.fast.normalise(pixels)

    def blank(self) -> torch.Tensor:
        """An image with no content: the padding colour everywhere (the demo's blind control)."""
        height, width = input_size(self.processor)
        return self(Image.new("RGB", (width, height), self.fill))


def check_preprocessing(made_for: dict[str, Any], transform: ImageTransform, where: str) -> None:
    """Raises unless ``transform`` preprocesses images exactly as ``made_for`` (pixels computed ahead) says."""
    wanted = transform.preprocessing()
    if wanted == made_for:
        return
    if wanted is None:
        run = f"{type(transform.processor).__name__}, whose steps llava_pl does not reproduce exactly"
    else:
        differ = [key for key in {**made_for, **wanted} if made_for.get(key) != wanted.get(key)]
        run = f"{wanted} (they differ in {', '.join(differ)})"
    raise DataError(f"{where} holds images pre-processed for {made_for}, but this run's image transform wants "
                     f"{run}: convert the data again for this vision encoder and the stage's image_aspect, or without "
                     "pre-processing")
