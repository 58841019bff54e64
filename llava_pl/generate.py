"""Batched greedy answering of (image, question) pairs with a trained ``LlavaModel``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.collate import LlavaCollator
from llava_pl.data.conversation import Message
from llava_pl.data.templates import Template
from llava_pl.data.tokenization import tokenize_segments
from llava_pl.model.llava import LlavaModel


def prompt_ids(
    question: str,
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    tokens_per_image: int,
    with_image: bool = True,
) -> torch.Tensor:
    """Token ids of a one-question prompt, built exactly as training builds the user turn."""
    text = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
    segments = template.segments([Message("user", text)], tokenizer, add_generation_prompt=True)
    tokens = tokenize_segments(segments, tokenizer, tokens_per_image, add_special_tokens=template.add_special_tokens)
    return torch.tensor(tokens.input_ids, dtype=torch.long)


class Answerer:
    """Answers questions about images in batches (left padding, KV cache, greedy unless told to sample)."""

    def __init__(
        self,
        model: LlavaModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        max_new_tokens: int = 16,
        batch_size: int = 32,
        synced: bool = False,
        **sampling: Any,
    ) -> None:
        """``sampling``: ``generate`` options such as ``do_sample``, ``temperature``, ``top_p``; greedy without.
        ``synced``: a model sharded over the processes (FSDP2, ZeRO-3) gathers its parameters in every forward
        pass, so every rank keeps stepping (on finished answers too) until every rank's answers are done."""
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.sampling = {"do_sample": False, **sampling, "synced_gpus": synced}
        self.collator = LlavaCollator(tokenizer.pad_token_id, padding_side="left")
        self.stop_id = tokenizer.convert_tokens_to_ids(template.stop_token(tokenizer))

    def __call__(self, questions: Sequence[str], images: Sequence[torch.Tensor | None]) -> list[str]:
        """``images[i]`` is the ``(C, H, W)`` pixel tensor for ``questions[i]``, or ``None`` for a text-only
        question (its prompt then has no image)."""
        answers: list[str] = []
        for start in range(0, len(questions), self.batch_size):
            chunk = list(zip(questions[start : start + self.batch_size], images[start : start + self.batch_size]))
            shape = next((image.shape for _, image in chunk if image is not None), (3, 1, 1))
            items = [
                {
                    "id": str(start + offset),
                    "input_ids": prompt_ids(question, self.template, self.tokenizer, self.model.tokens_per_image,
                                            with_image=image is not None),
                    "pixel_values": image.unsqueeze(0) if image is not None else torch.zeros(0, *shape),
                }
                for offset, (question, image) in enumerate(chunk)
            ]
            answers += self._generate(self.collator(items))
        return answers

    def _generate(self, batch: dict) -> list[str]:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            new_tokens = self.model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                pixel_values=batch["pixel_values"].to(device),
                images_per_sample=batch["images_per_sample"],
                max_new_tokens=self.max_new_tokens,
                **self.sampling,
                eos_token_id=self.stop_id,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        finally:
            self.model.train(was_training)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
