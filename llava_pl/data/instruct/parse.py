"""Turning an LLM's reply into LLaVA conversation turns, or rejecting it with a reason.

Nothing that fails these checks reaches the output: a reply is accepted only as complete, alternating
question/answer pairs (or, for descriptions, one complete answer) with nothing else around them.
"""

from __future__ import annotations

import re
from typing import Any

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.instruct.context import ImageContext
from llava_pl.data.instruct.prompts import KindPrompt


class ReplyError(ValueError):
    """A reply that cannot become training data. ``reason`` is a short category counted in the run's
    summary; the message adds what was seen."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _excerpt(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _marker_pattern(question_marker: str, answer_marker: str) -> re.Pattern[str]:
    # A marker opens a line, maybe decorated as markdown ("**Question:**", "### Answer:", "- Q:", "1. Question:")
    words = "|".join(re.escape(marker.rstrip(":").strip()) for marker in (question_marker, answer_marker))
    return re.compile(rf"^[ \t>*#_-]*(?:\d+[.)][ \t]*)?(?P<marker>{words})[ \t*_]*:[ \t*_]*",
                      re.IGNORECASE | re.MULTILINE)


def _blocks(text: str, prompt: KindPrompt) -> list[tuple[str, str]]:
    """``(role, content)`` per marker, role "question" or "answer"; raises on text before the first marker."""
    pattern = _marker_pattern(prompt.question_marker, prompt.answer_marker)
    matches = list(pattern.finditer(text))
    if not matches:
        markers = f"{prompt.question_marker!r} / {prompt.answer_marker!r}"
        raise ReplyError("no_turns", f"no {markers} lines in {_excerpt(text)}")
    preamble = text[: matches[0].start()].strip()
    if preamble:
        raise ReplyError("text_outside_turns", f"text before the first question: {_excerpt(preamble)}")
    question_word = prompt.question_marker.rstrip(":").strip().lower()
    blocks = []
    for match, following in zip(matches, [*matches[1:], None]):
        end = following.start() if following is not None else len(text)
        role = "question" if match.group("marker").lower() == question_word else "answer"
        blocks.append((role, text[match.end(): end].strip()))
    return blocks


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _check_text(prompt: KindPrompt, texts: list[str]) -> None:
    examples = [_normalised(example.reply) for example in prompt.examples]
    for text in texts:
        # Small models often repeat a few-shot example instead of writing about their image
        opening = _normalised(text)[:60]
        if len(opening) >= 20 and any(opening in example for example in examples):
            raise ReplyError("copied_example", f"repeats a few-shot example: {_excerpt(text)}")
        if IMAGE_PLACEHOLDER in text:
            raise ReplyError("image_placeholder", f"the reply contains {IMAGE_PLACEHOLDER}: {_excerpt(text)}")
        lowered = text.lower()
        for phrase in prompt.reject_phrases:
            if phrase.lower() in lowered:
                raise ReplyError("rejected_phrase", f"mentions {phrase!r}: {_excerpt(text)}")


def parse_qa(
    text: str, prompt: KindPrompt, truncated: bool = False, salvage_truncated: bool = True
) -> list[tuple[str, str]]:
    """Question/answer pairs of a ``qa`` reply.

    A truncated reply (the LLM hit its token limit) has an unfinished last block; with ``salvage_truncated`` that
    block (and a question left without its answer) is dropped and the complete pairs before it are kept, since
    each of them is closed by the marker that follows it.
    """
    blocks = _blocks(text, prompt)
    if truncated:
        if not salvage_truncated:
            raise ReplyError("truncated", f"the reply hit the token limit: ...{_excerpt(text[-80:])}")
        blocks = blocks[:-1]
        if blocks and blocks[-1][0] == "question":
            blocks = blocks[:-1]
        if not blocks:
            raise ReplyError("truncated", f"the token limit came before the first complete pair: {_excerpt(text)}")
    for position, (role, content) in enumerate(blocks):
        expected = "question" if position % 2 == 0 else "answer"
        if role != expected:
            raise ReplyError("not_alternating",
                             f"block {position} is an {role}, expected a {expected}: {_excerpt(content)}")
        if not content:
            raise ReplyError("empty_turn", f"block {position} ({role}) is empty")
    if blocks[-1][0] == "question":
        raise ReplyError("unanswered_question", f"the last question has no answer: {_excerpt(blocks[-1][1])}")
    pairs = [(blocks[i][1], blocks[i + 1][1]) for i in range(0, len(blocks), 2)]
    if len(pairs) < prompt.min_pairs:
        raise ReplyError("too_few_pairs", f"{len(pairs)} question/answer pair(s), at least {prompt.min_pairs} wanted")
    if len(pairs) > prompt.max_pairs:
        raise ReplyError("too_many_pairs", f"{len(pairs)} question/answer pairs, at most {prompt.max_pairs} wanted")
    seen = set()
    for question, _ in pairs:
        key = " ".join(question.lower().split())
        if key in seen:
            raise ReplyError("repeated_question", f"asked twice: {_excerpt(question)}")
        seen.add(key)
    _check_text(prompt, [part for pair in pairs for part in pair])
    return pairs


def parse_description(text: str, prompt: KindPrompt, truncated: bool = False) -> str:
    """The answer of a ``description`` reply: the whole reply, complete and free of question/answer markers."""
    text = text.strip()
    if truncated:
        raise ReplyError("truncated", f"the reply hit the token limit: ...{_excerpt(text[-80:])}")
    if not text:
        raise ReplyError("empty_reply", "the reply is empty")
    if _marker_pattern(prompt.question_marker, prompt.answer_marker).search(text):
        raise ReplyError("text_outside_turns",
                         f"a description should not contain question/answer lines: {_excerpt(text)}")
    if len(text) < prompt.min_chars:
        raise ReplyError("too_short", f"{len(text)} characters, at least {prompt.min_chars} wanted: {_excerpt(text)}")
    _check_text(prompt, [text])
    return text


def parse_reply(
    text: str, prompt: KindPrompt, context: ImageContext, seed: int = 0, truncated: bool = False,
    salvage_truncated: bool = True,
) -> dict[str, Any]:
    """The LLaVA record for one reply: ``{"id", "image", "conversations"}`` with alternating human/gpt turns and
    ``<image>`` opening the first human turn. Raises ``ReplyError`` for a reply that does not parse."""
    if prompt.format == "description":
        pairs = [(prompt.instruction_for(context.id, seed), parse_description(text, prompt, truncated))]
    else:
        pairs = parse_qa(text, prompt, truncated, salvage_truncated)
    turns = []
    for index, (question, answer) in enumerate(pairs):
        human = f"{IMAGE_PLACEHOLDER}\n{question}" if index == 0 else question
        turns += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": context.id, "image": context.image, "conversations": turns}
