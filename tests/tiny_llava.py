"""A LlavaModel small enough to count its FLOPs by hand (tests/test_flops.py works the numbers out).

Vision: CLIP, hidden 8, MLP 16, 1 layer, 2 heads, 16-px images in 8-px patches → 4 patches + CLS = 5 tokens.
Projector: mlp2x_gelu 8 → 16 → 16. LLM: Llama, hidden 16, MLP 32, 1 layer, 2 heads, vocabulary 40, untied head.
"""

from __future__ import annotations

from typing import Literal

from transformers import LlamaConfig, LlamaForCausalLM

from llava_pl.model.llava import LlavaModel
from llava_pl.model.projector import MLPProjector
from llava_pl.model.vision import VisionEncoder
from llava_pl.stage import PARTS

VOCAB = 40


def tiny_llava(attention: Literal["sdpa", "eager"] = "sdpa") -> LlavaModel:
    vision = VisionEncoder.from_config(
        "clip_vision_model",
        {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": 16, "patch_size": 8, "attn_implementation": attention},
        {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 16},
         "crop_size": {"height": 16, "width": 16}},
        select_layer=-1,
    )
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                                       attn_implementation=attention))
    return LlavaModel(vision, lambda vision_dim, llm_dim: MLPProjector(vision_dim, llm_dim), llm)


def freeze_all_but(model: LlavaModel, trains: list[str]) -> LlavaModel:
    for part in PARTS:
        getattr(model, part).requires_grad_(part in trains)
    return model
