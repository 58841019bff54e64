"""The language model: any ``AutoModelForCausalLM`` and its tokenizer."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_tokenizer(name_or_path: str, pad_token: str | None = None, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Loads a tokenizer and makes sure it can pad.

    Args:
        pad_token: the token to pad with when the tokenizer has none (e.g. ``<unk>`` for Vicuna, as LLaVA
            does); it must already be in the vocabulary so that no embedding has to be added.
    """
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
    tokenizer: PreTrainedTokenizerBase,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Loads pretrained causal-LM weights (a hub name or a local folder)."""
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=attn_implementation, **kwargs
    )
    _check_vocabulary(model, tokenizer)
    return model


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
    return AutoModelForCausalLM.from_config(model_config)


def _check_vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows"
        )
