"""The LLaVA architecture: image features spliced into the token embeddings at the placeholder positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.model.blocks import resolve_block_class
from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.model.vision import VisionEncoder


class ImageCountError(ValueError):
    """The image-placeholder positions of a sample do not match the images given for it."""


def check_image_positions(
    input_ids: torch.Tensor,
    images_per_sample: torch.Tensor,
    tokens_per_image: int,
    sample_ids: Sequence[str] | None = None,
) -> None:
    """Raises ``ImageCountError`` naming the sample whose placeholder count does not fit its images."""
    placeholders = (input_ids == IMAGE_TOKEN_ID).sum(dim=1)
    expected = images_per_sample.to(placeholders.device) * tokens_per_image
    bad = torch.nonzero(placeholders != expected).flatten().tolist()
    if bad:
        row = bad[0]
        name = sample_ids[row] if sample_ids is not None else f"row {row}"
        raise ImageCountError(
            f"sample {name}: {int(placeholders[row])} image-token positions but {int(images_per_sample[row])} "
            f"image(s) x {tokens_per_image} tokens = {int(expected[row])} expected"
        )


def splice_image_features(
    token_embeddings: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor
) -> torch.Tensor:
    """Writes image features into the image-token positions, in reading order (row by row).

    Args:
        token_embeddings: ``(batch, seq, dim)`` embeddings of the text tokens.
        input_ids: ``(batch, seq)`` with ``IMAGE_TOKEN_ID`` at every image position.
        image_features: ``(num_images, tokens_per_image, dim)``, images in the order they appear.
    """
    mask = input_ids == IMAGE_TOKEN_ID
    flat = image_features.reshape(-1, image_features.shape[-1]).to(token_embeddings.dtype)
    if int(mask.sum()) != flat.shape[0]:
        raise ImageCountError(f"{int(mask.sum())} image-token positions but {flat.shape[0]} image features")
    return token_embeddings.masked_scatter(mask.unsqueeze(-1), flat)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised positions (0 when none is supervised)."""
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1).to(logits.device)
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (shifted_labels != IGNORE_INDEX).sum().clamp(min=1)


class LlavaModel(nn.Module):
    """Vision encoder → projector → language model.

    Args:
        vision: the vision encoder (one tower, or several fused).
        projector: a callable ``(vision_dim, llm_dim) -> nn.Module`` (a partially configured projector
            class) or an already built module.
        llm: any Hugging Face causal language model.
        llm_block_class: import path of the LLM's decoder block class; it must occur in ``llm``.
    """

    def __init__(
        self,
        vision: VisionEncoder | FusedVisionEncoder,
        projector: Any,
        llm: PreTrainedModel,
        llm_block_class: str | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        if not isinstance(projector, nn.Module):
            projector = projector(vision.hidden_size, llm.config.get_text_config().hidden_size)
        self.projector = projector
        self.llm = llm
        self.llm_block_classes = (resolve_block_class(llm_block_class, llm),) if llm_block_class else ()

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The transformer block classes of the vision tower(s) and the LLM that their configs name: the units
        of FSDP wrapping and activation checkpointing."""
        return tuple(dict.fromkeys((*self.vision.block_classes, *self.llm_block_classes)))

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_image_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(num_images, C, H, W)`` → ``(num_images, tokens_per_image, llm_dim)``."""
        return self.projector(self.vision(pixel_values))

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        images_per_sample: torch.Tensor | None = None,
        sample_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the projected image features in place of the image tokens.

        With ``images_per_sample`` each row's placeholder count is checked against its own images;
        without it only the batch total is checked.
        """
        if images_per_sample is not None:
            check_image_positions(input_ids, images_per_sample, self.tokens_per_image, sample_ids)
        text_ids = input_ids.clamp(min=0)  # image positions get a dummy id; their embedding is overwritten
        embeddings = self.llm.get_input_embeddings()(text_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            if bool((input_ids == IMAGE_TOKEN_ID).any()):
                raise ImageCountError("the batch has image-token positions but no images")
            return embeddings
        return splice_image_features(embeddings, input_ids, self.encode_images(pixel_values))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        images_per_sample: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sample_ids: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"logits": ...}`` and, when labels are given, ``{"loss": ...}``."""
        embeddings = self.embed(input_ids, pixel_values, images_per_sample, sample_ids)
        outputs = self.llm(
            inputs_embeds=embeddings, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        result = {"logits": outputs.logits}
        if labels is not None:
            result["loss"] = causal_lm_loss(outputs.logits, labels)
        return result

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        images_per_sample: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generates continuations of left-padded prompts; returns only the new tokens."""
        embeddings = self.embed(input_ids, pixel_values, images_per_sample)
        return self.llm.generate(inputs_embeds=embeddings, attention_mask=attention_mask, **generate_kwargs)
