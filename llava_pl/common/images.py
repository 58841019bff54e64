"""What the data pipeline and the vision encoder agree on about images: the aspect choices and the input size."""

from __future__ import annotations

from typing import Literal

from transformers import BaseImageProcessor

ImageAspect = Literal["pad", "crop", "resize"]
IMAGE_ASPECTS: tuple[ImageAspect, ...] = ("pad", "crop", "resize")


def input_size(processor: BaseImageProcessor) -> tuple[int, int]:
    """``(height, width)`` of the tensors the processor produces."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])
