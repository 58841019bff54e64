"""What every chat backend gives the generator: a reply to a list of chat messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Reply:
    text: str
    truncated: bool  # the LLM stopped at its token limit rather than ending its turn


class BackendError(RuntimeError):
    """One request failed for good (after the backend's own retries); the record is skipped, the run goes on."""


class FatalBackendError(RuntimeError):
    """A failure no other request would escape (a wrong key, URL or model name): the run stops."""


class ChatBackend(Protocol):
    concurrency: int  # requests the generator may have in flight at once

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        ...
