"""Several vision towers seen as one encoder: patch features concatenated per patch (Prismatic's DINOv2 + SigLIP).

Each tower keeps its own image processor (resize, crop, normalisation); the fused processor stacks their
outputs along the channel axis, so one pixel tensor per image travels through the data pipeline unchanged and
the encoder splits it again, giving each tower the pixels its own processor made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import BaseImageProcessor

from llava_pl.common.images import input_size
from llava_pl.model.vision import VisionEncoder


class FusedImageProcessor:
    """Runs every tower's image processor on the same image; returns their pixels stacked along channels.

    ``image_mean`` (LLaVA's padding colour) is the first processor's.
    """

    def __init__(self, processors: Sequence[BaseImageProcessor]) -> None:
        sizes = [input_size(processor) for processor in processors]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"the fused towers' image processors give different image sizes {sizes}: override their size "
                "(and crop_size) so that every tower sees the same image"
            )
        height, width = sizes[0]
        self.processors = list(processors)
        self.size = {"height": height, "width": width}
        self.do_center_crop = False
        self.image_mean = processors[0].image_mean

    def __call__(self, images: Any, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError(f"FusedImageProcessor returns torch tensors only, got return_tensors={return_tensors!r}")
        pixels = [processor(images=images, return_tensors="pt")["pixel_values"] for processor in self.processors]
        return {"pixel_values": torch.cat(pixels, dim=1)}


class FusedVisionEncoder(nn.Module):
    """Concatenates the features of several ``VisionEncoder``s patch by patch.

    Args:
        encoders: the towers by name, in the order their features are concatenated. Every tower must give the
            same number of image tokens (the same patch grid: image size / patch size).
    """

    def __init__(self, encoders: Mapping[str, VisionEncoder]) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"a fused vision encoder needs at least two encoders, got {list(encoders)}")
        self.encoders = nn.ModuleDict(dict(encoders.items()))
        tokens = {name: encoder.num_image_tokens for name, encoder in self.encoders.items()}
        if len(set(tokens.values())) != 1:
            raise ValueError(
                f"the fused encoders give different numbers of image tokens {tokens}: choose image sizes that "
                "give every tower the same patch grid"
            )
        self.image_processor = FusedImageProcessor([encoder.image_processor for encoder in self.encoders.values()])
        self.channels = [encoder.tower.config.num_channels for encoder in self.encoders.values()]
        self.block_classes = tuple(
            dict.fromkeys(block for encoder in self.encoders.values() for block in encoder.block_classes)
        )

    @property
    def hidden_size(self) -> int:
        return sum(encoder.hidden_size for encoder in self.encoders.values())

    @property
    def num_image_tokens(self) -> int:
        return next(iter(self.encoders.values())).num_image_tokens

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.encoders.values())).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(num_images, sum of channels, H, W)`` → ``(num_images, num_image_tokens, sum of hidden sizes)``."""
        if pixel_values.shape[1] != sum(self.channels):
            raise ValueError(
                f"pixel_values have {pixel_values.shape[1]} channels; the fused towers take {self.channels} "
                "stacked (use the fused encoder's image_processor)"
            )
        chunks = pixel_values.split(self.channels, dim=1)
        return torch.cat([encoder(chunk) for encoder, chunk in zip(self.encoders.values(), chunks)], dim=-1)
