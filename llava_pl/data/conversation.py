"""Reading LLaVA JSON records into messages and image paths, with checks that name the sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.errors import UserError

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


class SampleError(UserError, ValueError):
    """A record of a data file is bad; the message names the file and the sample, ``reason`` says which kind
    of problem it is (one of ``llava_pl.data.bad_samples.REASONS``)."""

    def __init__(self, source: str, sample_id: str, problem: str, reason: str = "malformed") -> None:
        super().__init__(f"{source}: sample {sample_id}: {problem}")
        self.source = source
        self.sample_id = sample_id
        self.problem = problem
        self.reason = reason


def parse_record(record: dict[str, Any], source: str, index: int) -> Conversation:
    """Validates a LLaVA JSON record and turns it into a ``Conversation``.

    Checks: turns alternate user/assistant starting with the user (after an optional system turn),
    the number of ``<image>`` placeholders equals the number of images, placeholders appear only in
    user turns and no assistant turn is empty. Each failure's ``SampleError.reason`` names its kind. With one image, the placeholder is moved to the start of its turn followed
    by a newline, as LLaVA does, so ``"<image>\\n..."`` and ``"...\\n<image>"`` train alike.
    """
    if not isinstance(record, dict):
        raise SampleError(source, f"#{index}", f"is not a JSON object: {str(record)[:80]!r}")
    sample_id = str(record.get("id", f"#{index}"))
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError(source, sample_id, "has no 'conversations' list")
    image_field = record.get("image")
    images = tuple([image_field] if isinstance(image_field, str) else image_field or [])
    if not all(isinstance(image, str) and image for image in images):
        raise SampleError(source, sample_id, f"'image' must be a path or a list of paths, got {image_field!r}")

    messages: list[Message] = []
    for position, turn in enumerate(turns):
        value = turn.get("value") if isinstance(turn, dict) else None
        if not isinstance(value, str) or "from" not in turn:
            raise SampleError(source, sample_id, f"turn {position} is not a {{'from', 'value'}} pair: {turn!r}")
        role = _ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise SampleError(source, sample_id, f"turn {position} is from unknown role {turn['from']!r}", "roles")
        if role == "system" and position != 0:
            raise SampleError(source, sample_id, f"turn {position}: a system turn may only come first", "roles")
        messages.append(Message(role, value))

    dialogue = [m for m in messages if m.role != "system"]
    for position, message in enumerate(dialogue):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            raise SampleError(source, sample_id, f"turn {position} is from {message.role}, expected {expected}",
                              "roles")
        if message.role == "assistant" and IMAGE_PLACEHOLDER in message.content:
            raise SampleError(source, sample_id, f"turn {position}: {IMAGE_PLACEHOLDER} in an assistant turn",
                              "image_count")
        if message.role == "assistant" and not message.content.strip():
            raise SampleError(source, sample_id, f"turn {position}: the assistant turn is empty", "empty_turn")
    if dialogue and dialogue[-1].role != "assistant":
        raise SampleError(source, sample_id, "the last turn is not an assistant turn: nothing to learn from it",
                          "roles")

    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise SampleError(
            source, sample_id, f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)",
            "image_count",
        )
    if len(images) == 1:
        messages = [_image_first(m) if IMAGE_PLACEHOLDER in m.content else m for m in messages]
    return Conversation(sample_id, images, tuple(messages))


def _image_first(message: Message) -> Message:
    text = message.content.replace(IMAGE_PLACEHOLDER, "").strip()
    return Message(message.role, f"{IMAGE_PLACEHOLDER}\n{text}")
