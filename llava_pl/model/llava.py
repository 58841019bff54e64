"""The LLaVA architecture: image features spliced into the token embeddings at the placeholder positions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from llava_pl.common.images import input_size
from llava_pl.common.packing import cumulative_lengths, position_ids_of, unpack_rows
from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.model.blocks import resolve_block_class
from llava_pl.model.feature_cache import VisionFeatureCache
from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.model.loss import causal_lm_loss, supervised_loss, supervised_positions
from llava_pl.model.vision import VisionEncoder
from llava_pl.stage import LossAverage


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


@functools.cache
def _forward_takes_logits_to_keep(model_class: type[nn.Module]) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _accepts_logits_to_keep(llm: nn.Module) -> bool:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # a peft model passes it through
    return _forward_takes_logits_to_keep(type(base))  # once per class, not once per step


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
        self.feature_cache: VisionFeatureCache | None = None  # used while the tower is frozen

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The transformer block classes of the vision tower(s) and the LLM that their configs name: the units
        of FSDP wrapping and activation checkpointing."""
        return tuple(dict.fromkeys((*self.vision.block_classes, *self.llm_block_classes)))

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_image_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(num_images, C, H, W)`` → ``(num_images, tokens_per_image, llm_dim)``.

        A frozen tower runs under ``no_grad``: nothing of its forward pass is kept for a backward pass; with a
        ``feature_cache`` it runs only on images it has not seen.
        """
        if any(parameter.requires_grad for parameter in self.vision.parameters()):
            return self.projector(self.vision(pixel_values))
        if self.feature_cache is not None:
            return self.projector(self.feature_cache(self.vision, pixel_values))
        with torch.no_grad():
            features = self.vision(pixel_values)
        return self.projector(features)

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
            if pixel_values is None:
                return embeddings
            # A text-only batch still runs the tower and projector, on one blank image whose features are
            # added times zero: every rank then gathers and reduces the same parameters in every step, which
            # ZeRO-3 and FSDP need (a rank that skips them waits forever, LLaVA issue #699), and DDP sees the
            # projector used. The loss and the gradients stay those of the text alone.
            height, width = input_size(self.vision.image_processor)
            channels = 3 * len(getattr(self.vision, "encoders", [self.vision]))  # fused towers stack channels
            blank = pixel_values.new_zeros((1, channels, height, width))
            return embeddings + 0.0 * self.encode_images(blank).sum().to(embeddings.dtype)
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
        sample_lengths: torch.Tensor | None = None,
        return_logits: bool = True,
        loss_average: LossAverage = "token",
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"logits": ...}`` and, when labels are given, ``{"loss": ...}``.

        Args:
            sample_lengths: marks ``input_ids`` as one packed row of samples of these lengths
                (``llava_pl.data.packing``): positions restart and attention stays within each sample;
                ``attention_mask`` is then not used.
            return_logits: with ``labels``, ``False`` computes the LM head only at the positions whose next
                token is supervised (the only ones the loss reads) and returns the loss alone.
            loss_average: ``token`` (LLaVA) averages the loss over the supervised tokens, ``sample`` over each
                sample's own mean (``llava_pl.model.loss``).
        """
        llm_kwargs: dict[str, Any] = {}
        if sample_lengths is not None:
            if input_ids.shape[0] != 1 or int(sample_lengths.sum()) != input_ids.shape[1]:
                raise ValueError(
                    f"a packed batch is one row of sum(sample_lengths) tokens; got input_ids {tuple(input_ids.shape)} "
                    f"and sample lengths summing to {int(sample_lengths.sum())}"
                )
            if images_per_sample is not None:
                unpacked = unpack_rows(input_ids, sample_lengths, 0)
                check_image_positions(unpacked, images_per_sample, self.tokens_per_image, sample_ids)
                images_per_sample = None
            if position_ids is None:
                position_ids = position_ids_of(sample_lengths.tolist()).unsqueeze(0).to(input_ids.device)
            boundaries = cumulative_lengths(sample_lengths).to(input_ids.device)
            longest = int(sample_lengths.max())
            attention_mask = None
            llm_kwargs = {"cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries,
                          "max_length_q": longest, "max_length_k": longest}
        embeddings = self.embed(input_ids, pixel_values, images_per_sample, sample_ids)
        sparse = labels is not None and not return_logits and _accepts_logits_to_keep(self.llm)
        if sparse:
            keep = supervised_positions(labels.to(input_ids.device))
            llm_kwargs["logits_to_keep"] = keep
        outputs = self.llm(
            inputs_embeds=embeddings, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
            **llm_kwargs,
        )
        if sparse:
            loss = supervised_loss(outputs.logits, labels.to(input_ids.device), keep, loss_average, sample_lengths)
            return {"loss": loss}
        result = {"logits": outputs.logits}
        if labels is not None:
            result["loss"] = causal_lm_loss(outputs.logits, labels, loss_average, sample_lengths)
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
