"""A vision encoder wrapper around any Hugging Face vision tower (CLIP, SigLIP, DINOv2, ...)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, BaseImageProcessor, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import is_torchvision_available

from llava_pl.common.images import input_size
from llava_pl.model.architecture import config_source, is_architecture_only, resolve_dtype
from llava_pl.model.blocks import resolve_block_class
from llava_pl.model.pretrained_weights import deferred_part, pretrained_dtype

SelectFeature = Literal["patch", "cls_patch"]


def _vision_config(config: PretrainedConfig) -> PretrainedConfig:
    # Dual-encoder checkpoints (CLIP, SigLIP) nest the tower's config; vision-only ones are the config.
    return getattr(config, "vision_config", None) or config


def _image_processor_class(name: str) -> type[BaseImageProcessor]:
    # Without torchvision, transformers serves `XImageProcessor` as `XImageProcessorPil` with a warning; asking
    # for the PIL class directly is the same class, silently (AutoImageProcessor picks its backend the same way).
    if not is_torchvision_available() and hasattr(transformers, f"{name}Pil"):
        return getattr(transformers, f"{name}Pil")
    return getattr(transformers, name)


def _vision_model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    try:
        return MODEL_MAPPING[type(config)]
    except KeyError as error:
        raise ValueError(f"transformers has no vision model for config type {type(config).__name__}") from error


def _empty_tower(
    model_class: type[PreTrainedModel], config: PretrainedConfig, dtype: torch.dtype | None
) -> PreTrainedModel:
    with torch.device("meta"):
        tower = model_class(config)
    return tower.to(dtype) if dtype is not None else tower


class VisionEncoder(nn.Module):
    """Turns pixel values into a sequence of patch features taken from one hidden layer of the tower.

    Args:
        tower: the Hugging Face vision model (e.g. ``CLIPVisionModel``).
        image_processor: the tower's own image processor (resize, crop, normalise).
        select_layer: index into the tower's hidden states; -2 is the penultimate layer (LLaVA).
        select_feature: ``patch`` keeps only patch tokens, ``cls_patch`` keeps the CLS token too; register
            tokens (DINOv2 with registers) are always dropped.
        block_class: import path of the tower's transformer block (e.g. ``...modeling_clip.CLIPEncoderLayer``),
            for FSDP wrapping and activation checkpointing; it must occur in the tower.

    The number of patches follows the image processor's output size, which is what the tower sees: DINOv2's
    config says 518 px but its processor crops 224 px (16 x 16 patches), and towers that interpolate their
    position embeddings can be fed another size by overriding the processor's.
    """

    def __init__(
        self,
        tower: PreTrainedModel,
        image_processor: BaseImageProcessor,
        select_layer: int = -2,
        select_feature: SelectFeature = "patch",
        block_class: str | None = None,
    ) -> None:
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.tower = tower
        self.image_processor = image_processor
        self.select_layer = select_layer
        self.select_feature = select_feature
        height, width = input_size(image_processor)
        patch_size = tower.config.patch_size
        self.num_patches = (height // patch_size) * (width // patch_size)
        self.num_prefix_tokens = self._count_prefix_tokens()
        if select_feature == "cls_patch" and self.num_prefix_tokens == 0:
            raise ValueError(f"{type(tower).__name__} has no CLS token: use select_feature='patch'")
        self.block_classes = (resolve_block_class(block_class, tower),) if block_class else ()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        select_layer: int = -2,
        select_feature: SelectFeature = "patch",
        dtype: str | torch.dtype | None = None,
        block_class: str | None = None,
        image_processor: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> VisionEncoder:
        """Loads the tower and its image processor from a hub name or a local folder.

        A dual-encoder checkpoint (a full CLIP or SigLIP model) gives its vision half. Inside
        ``architecture_only()`` the tower is built empty, on the meta device, from its config alone; inside
        ``deferred_weights()`` too, its weights read later (``llava_pl.model.pretrained_weights``).

        Args:
            image_processor: values that replace the checkpoint's image processor values, e.g.
                ``{size: {shortest_edge: 384}, crop_size: {height: 384, width: 384}}``.
        """
        source = config_source(name_or_path) if is_architecture_only() else name_or_path
        config = _vision_config(AutoConfig.from_pretrained(source))
        model_class = _vision_model_class(config)
        if is_architecture_only():
            tower = _empty_tower(model_class, config, resolve_dtype(dtype, config))
        else:
            tower = deferred_part(name_or_path, lambda files: _empty_tower(
                model_class, config, pretrained_dtype(dtype, config, files)).eval(), kwargs)
            if tower is None:
                tower = model_class.from_pretrained(name_or_path, dtype=dtype, **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, **(image_processor or {}))
        return cls(tower, processor, select_layer=select_layer, select_feature=select_feature, block_class=block_class)

    @classmethod
    def from_config(
        cls,
        model_type: str,
        config: dict[str, Any],
        image_processor: dict[str, Any],
        select_layer: int = -2,
        select_feature: SelectFeature = "patch",
        block_class: str | None = None,
    ) -> VisionEncoder:
        """Builds a randomly initialised tower from config values (the demo and tests use this).

        Args:
            model_type: a transformers vision model type, e.g. ``clip_vision_model``, ``siglip_vision_model``.
            config: keyword arguments of that model type's config class.
            image_processor: keyword arguments of an image processor, with ``image_processor_type``
                naming its class (e.g. ``CLIPImageProcessor``).
        """
        tower_config = AutoConfig.for_model(model_type, **config)
        with torch.device("meta") if is_architecture_only() else nullcontext():
            tower = _vision_model_class(tower_config)(tower_config)
        processor_kwargs = dict(image_processor)
        processor_class = _image_processor_class(processor_kwargs.pop("image_processor_type"))
        processor = processor_class(**processor_kwargs)
        return cls(tower, processor, select_layer=select_layer, select_feature=select_feature, block_class=block_class)

    def _count_prefix_tokens(self) -> int:
        # Tokens the tower puts in front of the patches: a CLS token (CLIP, DINOv2) and register tokens
        # (DINOv2 with registers puts them between the CLS token and the patches).
        embeddings = self._embeddings()
        has_cls = any(hasattr(embeddings, name) for name in ("class_embedding", "cls_token"))
        return int(has_cls) + getattr(self.tower.config, "num_register_tokens", 0)

    def _embeddings(self) -> nn.Module:
        base = getattr(self.tower, "vision_model", self.tower)
        embeddings = getattr(base, "embeddings", None)
        if embeddings is None:
            raise ValueError(f"cannot find the embeddings of {type(self.tower).__name__}")
        return embeddings

    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        """How many LLM positions one image occupies."""
        return self.num_patches + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Returns features of shape ``(num_images, num_image_tokens, hidden_size)``."""
        outputs = self.tower(pixel_values.to(self.dtype), output_hidden_states=True)
        hidden = outputs.hidden_states[self.select_layer]
        patches = hidden[:, self.num_prefix_tokens :]
        if self.select_feature == "cls_patch":
            return torch.cat([hidden[:, :1], patches], dim=1)
        return patches
