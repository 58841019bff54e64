"""The language model: any ``AutoModelForCausalLM`` and its tokenizer."""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llava_pl.model.architecture import config_source, is_architecture_only, resolve_dtype
from llava_pl.model.pretrained_weights import deferred_part, pretrained_dtype


def load_tokenizer(name_or_path: str, pad_token: str | None = None, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Loads a tokenizer and makes sure it can pad.

    Args:
        pad_token: the token to pad with when the tokenizer has none (e.g. ``<unk>`` for Vicuna, as LLaVA
            does); it must already be in the vocabulary so that no embedding has to be added.
        kwargs: passed to ``AutoTokenizer.from_pretrained``, e.g. ``gguf_file`` for a tokenizer read from a GGUF
            file in ``name_or_path``.
    """
    _require_gguf(kwargs.get("gguf_file"))
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary of the tokenizer at {name_or_path}")
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token is None:
        raise ValueError(
            f"the tokenizer at {name_or_path} has no pad token: set model.llm.tokenizer.pad_token to a token "
            "of its vocabulary (e.g. '<unk>' or the end-of-turn token)"
        )
    return tokenizer


def causal_lm_from_pretrained(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    gguf_file: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Loads pretrained causal-LM weights (a hub name or a local folder).

    Inside ``architecture_only()`` the model is built empty, on the meta device, from its config alone; the
    tokenizer may then be None (the vocabulary check needs it). Inside ``deferred_weights()`` it is built empty
    too, its weights read later, each process only its shard's (``llava_pl.model.pretrained_weights``).

    Args:
        gguf_file: a GGUF file in ``name_or_path`` to read the config and weights from (quantized weights are
            dequantized to ``dtype``); needs the ``gguf`` package.
    """
    _require_gguf(gguf_file)
    gguf = {"gguf_file": gguf_file} if gguf_file is not None else {}
    if is_architecture_only():
        config = AutoConfig.from_pretrained(config_source(name_or_path), **gguf)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, config))
    else:
        model = deferred_part(name_or_path, lambda files: _empty_causal_lm(name_or_path, dtype, attn_implementation,
                                                                           files), {**gguf, **kwargs})
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, attn_implementation=attn_implementation, **gguf, **kwargs
            )
    if tokenizer is not None:
        _check_vocabulary(model, tokenizer)
    return model


def _empty_causal_lm(
    name_or_path: str, dtype: str | torch.dtype | None, attn_implementation: str | None, files: list[Path]
) -> PreTrainedModel:
    """What ``from_pretrained`` would build, on the meta device and without reading weights."""
    config = AutoConfig.from_pretrained(name_or_path)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=pretrained_dtype(dtype, config, files))
    return model.eval()  # as from_pretrained returns it


def causal_lm_from_config(
    model_type: str,
    config: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Builds a randomly initialised causal LM sized to the tokenizer (the demo and tests use this)."""
    special_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    model_config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **special_ids, **config)
    if attn_implementation is not None:
        model_config._attn_implementation = attn_implementation
    with torch.device("meta") if is_architecture_only() else nullcontext():
        return AutoModelForCausalLM.from_config(model_config)


def _require_gguf(gguf_file: str | None) -> None:
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading {gguf_file} needs the Python package 'gguf'; install it with: pip install gguf")


def _check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows"
        )
