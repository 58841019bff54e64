"""Multi-turn, streamed answers from a trained model: what the terminal chat and the web demo share.

A ``Conversation`` (one image and the exchanges so far) belongs to whoever is chatting; a ``ChatModel`` turns
it plus a new question into a prompt in the model's own template, exactly as training rendered conversations
(the image placeholder opens the first user turn), and streams the answer as it is generated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from llava_pl.checkpoint.load import LoadedModel, load_for_inference
from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.conversation import Message
from llava_pl.data.templates import PlainTemplate
from llava_pl.data.tokenization import tokenize_segments


class ChatInputError(ValueError):
    """Input the chat refuses (an unreadable image, an empty or too long question); the message says why."""


@dataclass
class Sampling:
    """How answers are drawn. ``temperature`` 0 is greedy decoding (then ``top_p`` is unused)."""

    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ChatInputError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ChatInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ChatInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def from_config(cls, cfg: Any) -> Sampling:
        """The sampling settings of a ``conf/chat`` config."""
        return cls(float(cfg.temperature), float(cfg.top_p), int(cfg.max_new_tokens))

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class Conversation:
    """One image (or none) and the finished ``(question, answer)`` exchanges about it."""

    image: torch.Tensor | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        """Forgets the exchanges; the image stays."""
        self.turns.clear()


def open_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Reads an image file fully, refusing what is not an image or has more than ``max_pixels`` pixels.

    The size is checked from the header, before any pixel is decoded, so a small file that claims a huge
    image (a decompression bomb) costs nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise ChatInputError(f"{path}: no such file (or not a file)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ChatInputError(
                    f"{path.name}: the image is {width}x{height} = {width * height:,} pixels, more than the "
                    f"{max_pixels:,} allowed"
                )
            image.load()
            return image.copy()
    except ChatInputError:
        raise
    except UnidentifiedImageError as error:
        raise ChatInputError(f"{path.name}: not an image (no image format recognises the file)") from error
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ChatInputError(f"{path.name}: the image cannot be read: {error}") from error


class _StopFlag(StoppingCriteria):
    """Ends generation once the flag is set (Ctrl-C in the terminal, a closed page or stop in the browser)."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return resolved


class ChatModel:
    """A loaded model that answers the next question of a ``Conversation``.

    Args:
        loaded: the model, tokenizer, template and image transform (``llava_pl.checkpoint.load.load_for_inference``).
        system: a system message to open every conversation with; ``None`` keeps the template's default.
    """

    def __init__(self, loaded: LoadedModel, system: str | None = None) -> None:
        self.loaded = loaded
        self.system = system
        tokenizer, template = loaded.tokenizer, loaded.template
        self.stop_id = tokenizer.convert_tokens_to_ids(template.stop_token(tokenizer))
        # the align stage's template renders one caption prompt and nothing else
        self.remembers_turns = not isinstance(template, PlainTemplate)
        text_config = loaded.model.llm.config.get_text_config()
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        template: dict[str, Any] | None = None,
        system: str | None = None,
        device: str = "auto",
        dtype: str | None = "auto",
    ) -> ChatModel:
        """Loads a llava_pl Lightning checkpoint or an exported Llava folder onto ``device``."""
        loaded = load_for_inference(path, template)
        target = _resolve_device(device)
        loaded.model.to(device=target, dtype=_resolve_dtype(dtype, target))
        return cls(loaded, system)

    @classmethod
    def from_config(cls, cfg: Any) -> ChatModel:
        """The model a ``conf/chat`` config names, with its template, system message, device, dtype and seed."""
        if cfg.seed is not None:
            torch.manual_seed(int(cfg.seed))
        template = OmegaConf.to_container(cfg.template, resolve=True) if cfg.template is not None else None
        return cls.from_path(cfg.model, template, cfg.system, cfg.device, cfg.dtype)

    @property
    def template_name(self) -> str:
        return type(self.loaded.template).__name__

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """The pixel tensor the vision encoder reads for ``image``."""
        return self.loaded.image_transform(image)

    def messages(self, conversation: Conversation, question: str) -> list[Message]:
        """The conversation plus the new question as template messages, the image opening the first user turn."""
        turns = conversation.turns if self.remembers_turns else []
        messages = [Message("system", self.system)] if self.system is not None else []
        for question_so_far, answer in turns:
            messages += [Message("user", question_so_far), Message("assistant", answer)]
        messages.append(Message("user", question))
        if conversation.image is not None:
            first = len(messages) - 2 * len(turns) - 1
            messages[first] = Message("user", f"{IMAGE_PLACEHOLDER}\n{messages[first].content}")
        return messages

    def prompt_ids(self, conversation: Conversation, question: str) -> list[int]:
        loaded = self.loaded
        segments = loaded.template.segments(self.messages(conversation, question), loaded.tokenizer,
                                            add_generation_prompt=True)
        return tokenize_segments(segments, loaded.tokenizer, loaded.model.tokens_per_image,
                                 add_special_tokens=loaded.template.add_special_tokens).input_ids

    def fit_context(self, conversation: Conversation, question: str, max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids and the number of new tokens that fit the model's context.

        The oldest exchanges are dropped from ``conversation`` while the prompt and ``max_new_tokens`` do not
        fit; then ``max_new_tokens`` shrinks to what is left. A question that does not fit on its own (with the
        image) is refused.
        """
        ids = self.prompt_ids(conversation, question)
        if self.context_length is None:
            return ids, max_new_tokens
        while len(ids) + max_new_tokens > self.context_length and conversation.turns:
            del conversation.turns[0]
            ids = self.prompt_ids(conversation, question)
        room = self.context_length - len(ids)
        if room < 1:
            raise ChatInputError(
                f"the question is {len(ids)} tokens long with the image; the model reads at most "
                f"{self.context_length}: ask a shorter one"
            )
        return ids, min(max_new_tokens, room)

    def answer(
        self, conversation: Conversation, question: str, sampling: Sampling, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """Streams the answer to ``question`` piece by piece; once it is complete (or stopped, through ``stop``
        or by closing the iterator) the exchange is added to ``conversation``.

        Only one answer is generated at a time: the model is shared by everyone chatting with it.
        """
        question = question.strip()
        if not question:
            raise ChatInputError("the question is empty: type something to ask")
        ids, max_new_tokens = self.fit_context(conversation, question, sampling.max_new_tokens)
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        pixel_values = (conversation.image.unsqueeze(0) if conversation.image is not None
                        else torch.zeros(0, 3, 1, 1)).to(device)
        stop = stop or threading.Event()
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    pixel_values=pixel_values,
                    images_per_sample=torch.tensor([pixel_values.shape[0]]),
                    max_new_tokens=max_new_tokens,
                    **sampling.generate_kwargs(),
                    eos_token_id=self.stop_id,
                    pad_token_id=tokenizer.pad_token_id,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopFlag(stop)]),
                )
            except BaseException as error:  # handed to the reading thread, which raises it
                failure.append(error)
                streamer.end()

        pieces: list[str] = []
        with self._lock:
            worker = threading.Thread(target=generate, name="llava_pl-generate", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    pieces.append(piece)
                    yield piece
            finally:
                stop.set()
                worker.join()
                if not failure:
                    conversation.turns.append((question, "".join(pieces).strip()))
        if failure:
            raise failure[0]
