"""Conversation templates: how messages become text segments, and which segments are supervised.

A template never renders a whole conversation and masks it afterwards: it yields the text turn by turn,
each piece flagged as supervised or not, so labels are right by construction whatever the tokenizer
(``llava_pl.data.tokenization`` tokenizes the pieces' text as one prompt).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.conversation import Message


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


class Template(Protocol):
    add_special_tokens: bool
    """Whether the tokenizer adds its own special tokens (a BOS) to the text, as LLaVA's templates have it;
    a chat template writes its own."""

    def segments(
        self, messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False
    ) -> list[Segment]:
        """Text pieces of ``messages``; with ``add_generation_prompt`` (messages ending with a user turn)
        the last piece is the cue after which the assistant answers."""
        ...

    def stop_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The token that ends an assistant turn, as the vocabulary spells it (generation stops there)."""
        ...


def _end_of_turn(tokenizer: PreTrainedTokenizerBase, end_of_turn: str | None) -> str:
    token = end_of_turn or tokenizer.eos_token
    if not token:
        raise ValueError("the tokenizer has no eos token: give the template an explicit end_of_turn")
    return token


class _EndOfTurn:
    end_of_turn: str | None = None

    def stop_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return _end_of_turn(tokenizer, self.end_of_turn)


class PlainTemplate:
    """The align stage's template (LLaVA's ``plain``): the tokenizer's BOS, the image, the caption and ``end``;
    the user's instruction is dropped. Only the caption and ``end`` are supervised, and generation stops at
    ``end``, which must be one token after text.

    Args:
        end: what closes each caption (LLaVA's ``"\n"``).
        begin: text before the image, for an LLM whose tokenizer adds no BOS of its own but that expects a start
            token (SmolLM2's ``<|im_start|>``); LLaVA's templates have none.
    """

    add_special_tokens = True

    def __init__(self, end: str = "\n", begin: str = "") -> None:
        if not end:
            raise ValueError("the plain template's end must not be empty: generation stops on it")
        self.end = end
        self.begin = begin

    def segments(
        self, messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False
    ) -> list[Segment]:
        dialogue = [m for m in messages if m.role != "system"]
        expected_turns = 1 if add_generation_prompt else 2
        if len(dialogue) != expected_turns:
            raise ValueError(f"the plain template takes one caption pair, got {len(dialogue)} turns")
        images = IMAGE_PLACEHOLDER * dialogue[0].content.count(IMAGE_PLACEHOLDER)
        segments = [Segment(self.begin + images, False)]
        if not add_generation_prompt:
            segments.append(Segment(dialogue[1].content + self.end, True))
        return segments

    def stop_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        before = tokenizer("a", add_special_tokens=False)["input_ids"]
        after = tokenizer("a" + self.end, add_special_tokens=False)["input_ids"]
        if len(after) != len(before) + 1 or after[: len(before)] != before:
            raise ValueError(
                f"the plain template's end {self.end!r} is not one token after text for this tokenizer "
                f"({tokenizer.convert_ids_to_tokens(after[len(before):])}), so generation could not stop on it: "
                "give PlainTemplate another end"
            )
        return tokenizer.convert_ids_to_tokens(after[-1])


class VicunaTemplate(_EndOfTurn):
    """LLaVA-1.5's ``vicuna_v1``: ``SYSTEM USER: q ASSISTANT: a</s>USER: ...`` after the tokenizer's BOS.

    Each answer is supervised from the space after ``ASSISTANT:`` through the end-of-turn token.
    """

    add_special_tokens = True

    DEFAULT_SYSTEM = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def __init__(self, system: str = DEFAULT_SYSTEM, end_of_turn: str | None = None) -> None:
        self.system = system
        self.end_of_turn = end_of_turn

    def segments(
        self, messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False
    ) -> list[Segment]:
        system = next((m.content for m in messages if m.role == "system"), self.system)
        end = self.stop_token(tokenizer)
        segments: list[Segment] = []
        prefix = system + " "
        for message in messages:
            if message.role == "user":
                segments.append(Segment(f"{prefix}USER: {message.content} ASSISTANT:", False))
                prefix = ""
            elif message.role == "assistant":
                segments.append(Segment(f" {message.content}{end}", True))
        return segments


class ChatTemplate(_EndOfTurn):
    """The tokenizer's own Jinja chat template, so any LLM that ships one works without new code.

    The whole conversation is rendered once; each message's segment ends where the rendering of the
    conversation up to that message stops agreeing with it. A template may close a conversation with special
    tokens that later turns replace (Phi-3 appends its eos token unless a generation prompt follows): such a
    closing belongs to a message's segment only where the whole conversation has it, and a segment never ends
    inside a special token. Any other difference (a template that rewrites earlier text when more messages
    follow) is refused, since turns could not be masked exactly.

    An assistant segment is supervised up to and including the end-of-turn token; whatever the template puts
    after it (often a newline) is not. A template's own refusals (Gemma's "System role not supported",
    Mistral's alternation check) are raised as ``ValueError`` with the template's message.

    Args:
        end_of_turn: the token that closes an assistant turn; default the tokenizer's eos token.
    """

    add_special_tokens = False  # the template writes the BOS where the model wants one

    def __init__(self, end_of_turn: str | None = None) -> None:
        self.end_of_turn = end_of_turn

    def segments(
        self, messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool = False
    ) -> list[Segment]:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{type(tokenizer).__name__} has no chat_template: choose another template")
        end = self.stop_token(tokenizer)
        chat = [{"role": m.role, "content": m.content} for m in messages]
        full = _render(tokenizer, chat, add_generation_prompt)
        specials = _special_tokens(tokenizer)
        segments: list[Segment] = []
        start = 0
        for count in range(1, len(chat) + 1):
            if count == len(chat):
                stop = len(full)
            else:
                cue = chat[count]["role"] == "assistant"
                stop = _agreeing_length(_render(tokenizer, chat[:count], cue), full, specials)
            if stop < start:
                raise ValueError(
                    "the tokenizer's chat template is not prefix-stable (rendering more messages changes "
                    f"earlier text), so turns cannot be masked exactly; use another template. Before: {full[:start]!r}"
                )
            new_text, start = full[start:stop], stop
            if chat[count - 1]["role"] != "assistant":
                segments.append(Segment(new_text, False))
                continue
            cut = new_text.rfind(end)
            cut = len(new_text) if cut < 0 else cut + len(end)
            segments.append(Segment(new_text[:cut], True))
            if new_text[cut:]:
                segments.append(Segment(new_text[cut:], False))
        return segments


def _render(tokenizer: PreTrainedTokenizerBase, chat: list[dict[str, str]], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        raise ValueError(f"the tokenizer's chat template refuses the conversation: {error}") from error


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    # Chat-control tokens such as Phi-3's <|user|> are often added tokens flagged special, not named ones.
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    named = getattr(tokenizer, "all_special_tokens", [])
    return sorted({*named, *(token.content for token in added if token.special)} - {""}, key=len, reverse=True)


def _agreeing_length(partial: str, full: str, specials: Sequence[str]) -> int:
    """How much of ``partial`` (a rendering of the first messages) is the start of ``full``.

    What follows in ``partial`` may only be special tokens and whitespace that the template closes a
    conversation with; the agreeing part is shortened so that it never ends inside a special token of ``full``.
    """
    length = len(os.path.commonprefix([partial, full]))
    moved = True
    while moved:
        moved = False
        for token in specials:
            at = full.find(token, max(0, length - len(token) + 1), length + len(token))
            if 0 <= at < length < at + len(token):
                length, moved = at, True
    tail = partial[length:]
    for token in specials:  # longest first
        tail = tail.replace(token, "")
    if tail.strip():
        raise ValueError(
            "the tokenizer's chat template is not prefix-stable (rendering more messages changes earlier text), "
            f"so turns cannot be masked exactly; use another template. After {full[:length][-60:]!r} the first "
            f"messages alone continue with {partial[length:][:60]!r}, the conversation with {full[length:][:60]!r}"
        )
    return length
