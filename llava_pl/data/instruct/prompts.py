"""One kind of instruction data as the prompt files in ``conf/instruct_prompts/`` describe it, and the chat
messages (system, few-shot pairs, the image's context) sent to the LLM for it."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llava_pl.errors import ConfigError

ReplyFormat = Literal["qa", "description"]


@dataclass(frozen=True)
class Example:
    context: str
    reply: str


@dataclass(frozen=True)
class KindPrompt:
    """How to ask for one kind of data and what a valid reply looks like.

    Args:
        format: ``qa``: the reply is alternating "Question:"/"Answer:" blocks that become the turns;
            ``description``: the reply is one answer, asked by one of ``instructions``.
        min_pairs, max_pairs: the question/answer pairs a ``qa`` reply may have.
        instructions: for ``description``, the human turns to pick from (one per image, seeded).
        reject_phrases: a reply that contains one of them (case-insensitive) is rejected, e.g. "caption",
            which gives away that the writer never saw the image.
        min_chars: a shorter ``description`` is rejected.
    """

    name: str
    system: str
    examples: tuple[Example, ...] = ()
    format: ReplyFormat = "qa"
    use_boxes: bool = True
    min_pairs: int = 1
    max_pairs: int = 10
    instructions: tuple[str, ...] = ()
    reject_phrases: tuple[str, ...] = ()
    min_chars: int = 1
    question_marker: str = "Question:"
    answer_marker: str = "Answer:"

    def __post_init__(self) -> None:
        where = f"prompts.{self.name}"
        if self.format not in ("qa", "description"):
            raise ConfigError(f"{where}.format must be 'qa' or 'description', got {self.format!r}")
        if self.format == "description" and not self.instructions:
            raise ConfigError(f"{where}: format 'description' needs a list of 'instructions' (the human turns)")
        if self.format == "qa" and not 1 <= self.min_pairs <= self.max_pairs:
            raise ConfigError(f"{where}: need 1 <= min_pairs <= max_pairs, got {self.min_pairs}, {self.max_pairs}")
        if not self.system.strip():
            raise ConfigError(f"{where}.system is empty")

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> KindPrompt:
        known = set(cls.__dataclass_fields__) - {"name", "examples"}
        unknown = set(config) - known - {"examples"}
        if unknown:
            raise ConfigError(f"prompts.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known | {'examples'})}")
        examples = []
        for index, example in enumerate(config.get("examples") or []):
            if not isinstance(example, Mapping) or set(example) != {"context", "reply"}:
                raise ConfigError(f"prompts.{name}.examples[{index}] must have exactly 'context' and 'reply'")
            examples.append(Example(str(example["context"]).strip(), str(example["reply"]).strip()))
        values = {key: config[key] for key in known if key in config}
        for key in ("instructions", "reject_phrases"):
            if key in values:
                values[key] = tuple(str(item) for item in values[key] or [])
        return cls(name=name, examples=tuple(examples), **values)

    def messages(self, context_text: str) -> list[dict[str, str]]:
        """System message, the few-shot examples as earlier user/assistant turns, then this image's context."""
        messages = [{"role": "system", "content": self.system.strip()}]
        for example in self.examples:
            messages += [{"role": "user", "content": example.context},
                         {"role": "assistant", "content": example.reply}]
        messages.append({"role": "user", "content": context_text})
        return messages

    def instruction_for(self, image_id: str, seed: int) -> str:
        """The human turn of a ``description`` record: the same for an image on every run."""
        return random.Random(f"{seed}:{image_id}").choice(self.instructions)


def load_prompts(configs: Mapping[str, Mapping[str, Any]], kinds: Sequence[str]) -> dict[str, KindPrompt]:
    """The prompt of every selected kind, in the order of ``kinds``."""
    missing = [kind for kind in kinds if kind not in configs]
    if missing:
        raise ConfigError(f"kinds {missing} have no prompt under prompts (have: {sorted(configs)}); add one with "
                         f"+instruct_prompts@prompts.<kind>=<file in conf/instruct_prompts>")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"kinds lists a kind twice: {list(kinds)}")
    return {kind: KindPrompt.from_config(kind, configs[kind]) for kind in kinds}
