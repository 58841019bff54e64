"""The models and batches of ``bench.train_step``: the benchmark sizes, one model built for both llava_pl and
Hugging Face, and synthetic samples of the realistic length mix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from bench.length_mix import LengthMix
from llava_pl.config_dir import CONF_DIR
from llava_pl.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from llava_pl.model.llava import LlavaModel
from llava_pl.model.projector import MLPProjector
from llava_pl.model.vision import VisionEncoder
from llava_pl.stage import StageConfig

PAD_ID = 0
PROMPT_SHARE = 0.4  # the first 40% of a sample's text is the (unsupervised) prompt, the rest the answer


@dataclass
class Size:
    """A benchmark model: a CLIP-style tower, an mlp2x_gelu projector and a Llama-style LLM."""

    vision: dict[str, Any]
    llm: dict[str, Any]
    max_length: int
    micro_batch_size: int
    steps: int
    dtype: torch.dtype = torch.float32
    cuda_only: bool = False
    note: str = ""


def _tiny() -> Size:
    """The demo's model, its configs read from conf/ (vocabulary: the demo tokenizer's limit of 1024)."""
    from omegaconf import OmegaConf

    conf = CONF_DIR / "model"
    vision = OmegaConf.to_container(OmegaConf.load(conf / "vision" / "tiny_clip.yaml"))
    llm = OmegaConf.to_container(OmegaConf.load(conf / "llm" / "tiny_llama.yaml"))["model"]["config"]
    return Size({"config": vision["config"], "image_processor": vision["image_processor"]},
                {**llm, "vocab_size": 1024}, max_length=256, micro_batch_size=16, steps=5,
                note="the demo's tiny model (conf/model/tiny.yaml)")


SIZES: dict[str, Callable[[], Size]] = {
    "tiny": _tiny,
    "small": lambda: Size(
        {"config": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 6,
                    "image_size": 224, "patch_size": 16},
         "image_processor": {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}},
        {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4, "num_attention_heads": 8,
         "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 512, "tie_word_embeddings": False},
        max_length=512, micro_batch_size=8, steps=2,
        note="a 4-layer LLM of width 512 (Llama vocabulary, 32,000) and a 4-layer 224-px ViT (196 image tokens)",
    ),
    "7b-slice": lambda: Size(
        {"config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "image_size": 336, "patch_size": 14, "projection_dim": 768},
         "image_processor": {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}},
        {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 4, "num_attention_heads": 32,
         "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
        max_length=2048, micro_batch_size=16, steps=8, dtype=torch.bfloat16, cuda_only=True,
        note="LLaVA-1.5-7B's shapes: CLIP ViT-L/14-336 (576 image tokens) and 4 of Vicuna-7B's 32 blocks, bf16",
    ),
}


def build_model(size: Size, seed: int) -> LlavaModel:
    torch.manual_seed(seed)
    processor = {"image_processor_type": "CLIPImageProcessor", **size.vision["image_processor"]}
    vision = VisionEncoder.from_config("clip_vision_model", size.vision["config"], processor, select_layer=-2)
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", pad_token_id=PAD_ID, **size.llm))
    return LlavaModel(vision, partial(MLPProjector, depth=2), llm,
                      "transformers.models.llama.modeling_llama.LlamaDecoderLayer")


def reference_tokenizer(vocab_size: int):
    """A word-level tokenizer over the LLM's vocabulary whose last id is ``<image>``, with a chat template of
    messages closed by ``t2``: all ``to_hf_llava`` needs."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{index}": index for index in range(vocab_size - 1)} | {IMAGE_PLACEHOLDER: vocab_size - 1}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t1")), pad_token="t0",
                                        eos_token="t2", additional_special_tokens=[IMAGE_PLACEHOLDER])
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}t2{% endfor %}"
    return tokenizer


def stage(trains: list[str], supervised_logits_only: bool = True, compile_blocks: bool = False,
          gradient_checkpointing: bool = False, vision_feature_cache: bool = False) -> StageConfig:
    return StageConfig(name="finetune", trains=trains, dataset="finetune", template=None, lr=2e-5,
                       part_lr={}, global_batch_size=1, micro_batch_size=1, epochs=1, max_steps=-1,
                       warmup_ratio=0.0, weight_decay=0.0, betas=(0.9, 0.999), gradient_clip_val=1.0,
                       max_length=2048, gradient_checkpointing=gradient_checkpointing, lora=None,
                       val_check_interval=None, compile_blocks=compile_blocks,
                       supervised_logits_only=supervised_logits_only, vision_feature_cache=vision_feature_cache)


def make_samples(mix: LengthMix, indices: list[int], image_tokens: int, vocab: int, image_size: int,
                 seed: int) -> list[dict[str, Any]]:
    """Data set items of the drawn lengths: a short prefix, the image, the text; the answer supervised."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in indices:
        text = int(mix.text_lengths[index])
        ids = torch.randint(1, vocab - 1, (text,), generator=generator)
        prompt = max(1, int(text * PROMPT_SHARE))
        if mix.has_image[index]:
            prefix = min(4, prompt)
            ids = torch.cat([ids[:prefix], torch.full((image_tokens,), IMAGE_TOKEN_ID), ids[prefix:]])
            prompt += image_tokens
        labels = ids.clone()
        labels[:prompt] = IGNORE_INDEX
        pixels = torch.randn(int(mix.has_image[index]), 3, image_size, image_size, generator=generator)
        samples.append({"id": str(index), "input_ids": ids, "labels": labels, "pixel_values": pixels})
    return samples


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    moved = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
    moved["pixel_values"] = moved["pixel_values"].to(dtype)
    return moved


def hf_batch(batch: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    ids = batch["input_ids"]
    pixels = batch["pixel_values"]
    return {"input_ids": torch.where(ids == IMAGE_TOKEN_ID, torch.full_like(ids, image_token_id), ids),
            "attention_mask": batch["attention_mask"], "labels": batch["labels"],
            "pixel_values": pixels if pixels.shape[0] else None}
