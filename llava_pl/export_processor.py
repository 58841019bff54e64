"""The processor of an exported Llava folder: with it, Hugging Face's own flow gives the model its training inputs.

``processor.apply_chat_template(messages, add_generation_prompt=True)`` renders the prompt of the template the
model trained with (``llava_pl.data.hf_chat_template``), and ``processor(text=..., images=...)`` gives its training
ids and pixels: the image processor is transformers' ``LlavaImageProcessor``, which pads to a square with LLaVA's
fill (``do_pad``) before the encoder's own resize and crop. The export checks both on probes and refuses what it
cannot reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
import transformers
from transformers import (
    BaseImageProcessor,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.image_processing_backends import PilBackend

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.fast_image import TOLERANCE
from llava_pl.data.hf_chat_template import hf_chat_template
from llava_pl.data.images import ImageTransform, input_size
from llava_pl.data.templates import Template


def _size(size: Any) -> dict[str, int]:
    keys = ("height", "width", "shortest_edge", "longest_edge")
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return {key: int(get(key)) for key in keys if get(key)}


def _processor_steps(processor: BaseImageProcessor) -> dict[str, Any]:
    """The encoder's processor's resize, crop, rescale and normalisation, as ``LlavaImageProcessor`` arguments."""
    crop = bool(getattr(processor, "do_center_crop", False))
    steps = {"do_resize": processor.do_resize, "size": _size(processor.size), "resample": processor.resample,
             "do_center_crop": crop, "do_rescale": processor.do_rescale, "rescale_factor": processor.rescale_factor,
             "do_normalize": processor.do_normalize, "image_mean": list(processor.image_mean),
             "image_std": list(processor.image_std), "do_convert_rgb": True}
    if crop:
        steps["crop_size"] = _size(processor.crop_size)
    return steps


def _stretched(processor: BaseImageProcessor) -> dict[str, Any]:
    height, width = input_size(processor)
    return {**_processor_steps(processor), "size": {"height": height, "width": width},
            "resample": Image.Resampling.BICUBIC, "do_center_crop": False, "do_pad": False}


# llava_pl's image aspect → the LlavaImageProcessor that does the same (see ImageTransform)
ASPECT_STEPS: dict[str, Callable[[BaseImageProcessor], dict[str, Any]]] = {
    "pad": lambda processor: {**_processor_steps(processor), "do_pad": True},
    "crop": lambda processor: {**_processor_steps(processor), "do_pad": False},
    "resize": _stretched,
}


def hf_image_processor(transform: ImageTransform) -> BaseImageProcessor:
    """A ``LlavaImageProcessor`` (of the encoder processor's backend) that preprocesses as ``transform`` does."""
    steps = ASPECT_STEPS.get(transform.aspect)
    if steps is None:
        raise ValueError(f"no Hugging Face image processor is known for the image aspect {transform.aspect!r}")
    # looked up only for a torchvision encoder processor: without torchvision the name warns and falls back to PIL
    kind = LlavaImageProcessorPil if isinstance(transform.processor, PilBackend) else transformers.LlavaImageProcessor
    return kind(**steps(transform.processor))


def pixel_difference(image_processor: BaseImageProcessor, transform: ImageTransform) -> float:
    """The largest difference between the two on probe images: portrait, landscape and square, random pixels."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in ((53, 37, 3), (29, 61, 3), (40, 40, 3)):
        probe = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        theirs = image_processor(images=probe, return_tensors="pt")["pixel_values"][0]
        ours = transform(probe)
        if theirs.shape != ours.shape:
            return float("inf")
        worst = max(worst, float((theirs - ours).abs().max()))
    return worst


def hf_processor(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    transform: ImageTransform,
    patch_size: int,
    vision_feature_select_strategy: str,
    num_additional_image_tokens: int,
) -> LlavaProcessor:
    """The exported folder's processor; ``tokenizer`` must know ``<image>`` and gets the chat template too (one
    file holds both). ``ValueError`` where the Hugging Face flow would not reproduce the training inputs."""
    chat_template = hf_chat_template(template, tokenizer)
    tokenizer.chat_template = chat_template
    image_processor = hf_image_processor(transform)
    difference = pixel_difference(image_processor, transform)
    if difference > TOLERANCE:
        raise ValueError(
            f"{type(image_processor).__name__} does not reproduce llava_pl's {transform.aspect!r} preprocessing with "
            f"{type(transform.processor).__name__} (pixels differ by up to {difference:.3g})"
        )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=num_additional_image_tokens,
        image_token=IMAGE_PLACEHOLDER,
        chat_template=chat_template,
    )
