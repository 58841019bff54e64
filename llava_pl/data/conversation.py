"""Reading LLaVA JSON records into messages and image paths, with checks that name the sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llava_pl.constants import IMAGE_PLACEHOLDER

Role = Literal["system", "user", "assistant"]

_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """One LLaVA record: its id, its image paths (relative to the image folder) and its messages."""

    sample_id: str
    images: tuple[str, ...]
    messages: tuple[Message, ...]


class SampleError(ValueError):
    """A record of a data file is malformed; the message names the file and the sample."""

    def __init__(self, source: str, sample_id: str, problem: str) -> None:
        super().__init__(f"{source}: sample {sample_id}: {problem}")
        self.source = source
        self.sample_id = sample_id


def parse_record(record: dict[str, Any], source: str, index: int) -> Conversation:
    """Validates a LLaVA JSON record and turns it into a ``Conversation``.

    Checks: turns alternate user/assistant starting with the user (after an optional system turn),
    the number of ``<image>`` placeholders equals the number of images, and placeholders appear
    only in user turns. With one image, the placeholder is moved to the start of its turn followed
    by a newline, as LLaVA does, so ``"<image>\\n..."`` and ``"...\\n<image>"`` train alike.
    """
    sample_id = str(record.get("id", f"#{index}"))
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError(source, sample_id, "has no 'conversations' list")
    image_field = record.get("image")
    images = tuple([image_field] if isinstance(image_field, str) else image_field or [])

    messages: list[Message] = []
    for position, turn in enumerate(turns):
        role = _ROLES.get(str(turn.get("from", "")).lower()) if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role is None or not isinstance(value, str):
            raise SampleError(source, sample_id, f"turn {position} is not a {{'from', 'value'}} pair: {turn!r}")
        if role == "system" and position != 0:
            raise SampleError(source, sample_id, f"turn {position}: a system turn may only come first")
        messages.append(Message(role, value))

    dialogue = [m for m in messages if m.role != "system"]
    for position, message in enumerate(dialogue):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            raise SampleError(source, sample_id, f"turn {position} is from {message.role}, expected {expected}")
        if message.role == "assistant" and IMAGE_PLACEHOLDER in message.content:
            raise SampleError(source, sample_id, f"turn {position}: {IMAGE_PLACEHOLDER} in an assistant turn")
    if dialogue and dialogue[-1].role != "assistant":
        raise SampleError(source, sample_id, "the last turn is not an assistant turn: nothing to learn from it")

    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise SampleError(
            source, sample_id, f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)"
        )
    if len(images) == 1:
        messages = [_image_first(m) if IMAGE_PLACEHOLDER in m.content else m for m in messages]
    return Conversation(sample_id, images, tuple(messages))


def _image_first(message: Message) -> Message:
    text = message.content.replace(IMAGE_PLACEHOLDER, "").strip()
    return Message(message.role, f"{IMAGE_PLACEHOLDER}\n{text}")
