"""A cache of a frozen vision tower's features, so that each distinct image is encoded once (``stage.<name>.vision_feature_cache``).

Images are keyed by their pixel values (a hash), so the same picture seen again in a later epoch, or by
another sample (LLaVA-1.5's mix asks about the same COCO images in VQAv2, GQA, LLaVA-Instruct, …), is found
however it is named. The pixel values are deterministic here (pad or resize, no augmentation), which is what
makes a cached feature exact. Features are kept in host memory, one entry per distinct image: LLaVA-1.5's
576 × 1024 bf16 features take 1.2 MB per image, so the cache suits data sets of up to some tens of
thousands of images, not the 558k of LLaVA-Pretrain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


class VisionFeatureCache:
    """``cache(encode, pixel_values)`` returns ``encode(pixel_values)``, running ``encode`` only on unseen images."""

    def __init__(self) -> None:
        self.features: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(pixels: torch.Tensor) -> bytes:
        return hashlib.blake2b(pixels.contiguous().numpy().tobytes(), digest_size=16).digest()

    def __call__(self, encode: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
        keys = [self.key(image) for image in pixel_values.detach().cpu()]
        first_unseen: dict[bytes, int] = {}
        for index, key in enumerate(keys):
            if key not in self.features:
                first_unseen.setdefault(key, index)
        missing = list(first_unseen.values())
        if missing:
            with torch.no_grad():
                encoded = encode(pixel_values[missing])
            for index, feature in zip(missing, encoded):
                self.features[keys[index]] = feature.to("cpu", copy=True)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.features[key] for key in keys]).to(pixel_values.device, non_blocking=True)
