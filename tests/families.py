"""Tiny random members of the real backbones' families, built offline from the configs the package carries.

A tiny variant keeps everything of its family's published config (attention layout, norms, activations, rope,
soft-capping, register tokens, image processor) except the sizes; a family tokenizer is the demo tokenizer
given the family's special tokens and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llava_pl.model.llm import causal_lm_from_config
from llava_pl.model.vision import SelectFeature, VisionEncoder
from llava_pl.presets.carried import carried_folder, chat_template, special_tokens

TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512}
TINY_TOWER = {"intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
TINY_IMAGE = 56  # 4 x 4 patches of 14 px, the patch size of every carried tower
_NOT_ARCHITECTURE = ("architectures", "model_type", "torch_dtype", "vocab_size", "bos_token_id", "eos_token_id",
                     "pad_token_id")  # the tiny variant takes these from the family tokenizer


def _carried_json(hub_id: str, file: str) -> dict[str, Any]:
    folder = carried_folder(hub_id)
    assert folder is not None, f"{hub_id} is not carried"
    return json.loads((folder / file).read_text())


def family_tokenizer(demo_tokenizer: Path, hub_id: str, out: Path) -> Path:
    """The demo tokenizer with the family's bos/eos/unk/pad and chat tokens and its chat template, saved to ``out``."""
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer)
    tokens = special_tokens(hub_id)
    named = {key: tokens[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token") if tokens[key]}
    chat_tokens = [token for token in tokens["added_tokens"] if token not in named.values()]
    tokenizer.add_special_tokens({**named, "additional_special_tokens": chat_tokens}, replace_extra_special_tokens=False)
    folder = carried_folder(hub_id)
    tokenizer.chat_template = chat_template(hub_id) if (folder / "chat_template.jinja").is_file() else None
    tokenizer.save_pretrained(out)
    return out


def tiny_llm(hub_id: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A random causal LM of the family's config with tiny sizes, sized to ``tokenizer``."""
    published = _carried_json(hub_id, "config.json")
    config = {key: value for key, value in published.items() if key not in _NOT_ARCHITECTURE}
    config.update(TINY_LLM)
    if "head_dim" in config:  # Gemma-2 sets it explicitly (256); keep it consistent with the tiny sizes
        config["head_dim"] = TINY_LLM["hidden_size"] // TINY_LLM["num_attention_heads"]
    return causal_lm_from_config(published["model_type"], config, tokenizer)


def tiny_tower(
    hub_id: str, hidden_size: int = 32, block_class: str | None = None, select_feature: SelectFeature = "patch"
) -> VisionEncoder:
    """A random vision tower of the family's config and image processor, at ``TINY_IMAGE`` px."""
    published = _carried_json(hub_id, "config.json")
    vision = dict(published.get("vision_config", published))
    model_type = vision.pop("model_type")
    vision = {key: value for key, value in vision.items() if key not in _NOT_ARCHITECTURE}
    vision.update(TINY_TOWER, hidden_size=hidden_size, image_size=TINY_IMAGE)
    processor = _carried_json(hub_id, "preprocessor_config.json")
    if "crop_size" in processor:
        processor.update(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    else:
        processor.update(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    return VisionEncoder.from_config(model_type, vision, processor, select_feature=select_feature, block_class=block_class)
