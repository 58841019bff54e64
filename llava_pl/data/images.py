"""Image loading and preprocessing: LLaVA's aspect handling, then the encoder's own image processor."""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image
from transformers import BaseImageProcessor

from llava_pl.data.fast_image import fast_processing

ImageAspect = Literal["pad", "resize"]


def input_size(processor: BaseImageProcessor) -> tuple[int, int]:
    """``(height, width)`` of the tensors the processor produces."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


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
        aspect: ``pad`` pads to a square with the processor's mean colour before processing;
            ``resize`` stretches the image to the encoder's input size, whatever its aspect.
    """

    def __init__(self, processor: BaseImageProcessor, aspect: ImageAspect = "pad") -> None:
        if aspect not in ("pad", "resize"):
            raise ValueError(f"image aspect must be 'pad' or 'resize', got {aspect!r}")
        self.processor = processor
        self.aspect = aspect
        self.mean_colour = tuple(int(round(255 * channel)) for channel in processor.image_mean)
        self.fast = fast_processing(processor)  # the processor's own steps, cheaper, where it reproduces them

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.aspect == "pad":
            image = pad_to_square(image, self.mean_colour)
        else:
            height, width = input_size(self.processor)
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        if self.fast is not None:
            return self.fast(image)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def blank(self) -> torch.Tensor:
        """An image with no content: the mean colour everywhere (the demo's blind control)."""
        height, width = input_size(self.processor)
        return self(Image.new("RGB", (width, height), self.mean_colour))
