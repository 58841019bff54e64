"""Import of a Hugging Face ``LlavaForConditionalGeneration`` folder (e.g. llava-1.5-7b-hf) as llava_pl parts.

Each part's factory takes the folder; the checkpoint is loaded once and shared by the three factories. Inside
``architecture_only()`` the parts are built empty, on the meta device, from the folder's config.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llava_pl.model.architecture import config_source, is_architecture_only
from llava_pl.model.projector import HF_LLAVA_LAYERS, INPUT_CENTER, MLPProjector
from llava_pl.model.vision import VisionEncoder


def _load(name_or_path: str, dtype: str | None) -> LlavaForConditionalGeneration:
    return _load_cached(name_or_path, dtype, is_architecture_only())


@lru_cache(maxsize=1)
def _load_cached(name_or_path: str, dtype: str | None, empty: bool) -> LlavaForConditionalGeneration:
    if empty:
        with torch.device("meta"):
            return LlavaForConditionalGeneration(AutoConfig.from_pretrained(config_source(name_or_path)))
    return LlavaForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype)


def vision_from_llava(name_or_path: str, dtype: str | None = None) -> VisionEncoder:
    """The Llava checkpoint's vision tower, with its feature layer and selection."""
    hf = _load(name_or_path, dtype)
    config = hf.config
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError(f"{name_or_path}: several vision feature layers {config.vision_feature_layer} are not supported")
    tower = hf.model.vision_tower
    processor = AutoImageProcessor.from_pretrained(name_or_path)
    encoder = VisionEncoder(tower, processor, select_layer=config.vision_feature_layer)
    if config.vision_feature_select_strategy == "full" and encoder.num_prefix_tokens == 1:
        encoder.select_feature = "cls_patch"
    return encoder


def projector_from_llava(vision_dim: int, llm_dim: int, name_or_path: str, dtype: str | None = None) -> MLPProjector:
    """An ``mlp2x_gelu`` projector holding the checkpoint's ``multi_modal_projector`` weights."""
    source = _load(name_or_path, dtype).model.multi_modal_projector
    projector = MLPProjector(vision_dim, llm_dim, depth=2).to(source.linear_1.weight.dtype)
    projector.load_state_dict({
        f"{index}.{name}": tensor
        for index, layer in HF_LLAVA_LAYERS.items()
        for name, tensor in getattr(source, layer).state_dict().items()
    } | {INPUT_CENTER: projector.input_center})  # a Llava checkpoint's projector reads uncentred features
    return projector


def llm_from_llava(name_or_path: str, tokenizer: PreTrainedTokenizerBase, dtype: str | None = None) -> PreTrainedModel:
    """The checkpoint's language model and LM head as a plain causal LM of the text config's type."""
    hf = _load(name_or_path, dtype)
    with torch.device("meta") if is_architecture_only() else nullcontext():
        llm = AutoModelForCausalLM.from_config(hf.config.text_config, dtype=hf.dtype)
    state: dict[str, Any] = {f"model.{k}": v for k, v in hf.model.language_model.state_dict().items()}
    state["lm_head.weight"] = hf.lm_head.weight
    missing, unexpected = llm.load_state_dict(state, strict=False)
    if unexpected or [key for key in missing if key != "lm_head.weight"]:
        raise ValueError(f"{name_or_path}: language model weights do not fit: missing {missing}, unexpected {unexpected}")
    if llm.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"{name_or_path}: the tokenizer is larger than the embedding")
    with torch.no_grad():
        llm.tie_weights()
    return llm
