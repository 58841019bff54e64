"""Every backbone family of the presets, as a tiny random variant: it trains, masks labels with the family's own
chat template, and exports to Hugging Face's Llava where that class can hold it (and is refused where not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from transformers import LlavaForConditionalGeneration

from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.data.conversation import parse_record
from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import ChatTemplate, VicunaTemplate
from llava_pl.data.tokenization import tokenize_segments
from llava_pl.export import ExportError, export
from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.model.llava import LlavaModel
from llava_pl.model.llm import causal_lm_from_config
from llava_pl.model.projector import MLPProjector
from tests.families import TINY_IMAGE, family_tokenizer, tiny_llm, tiny_tower
from tests.test_labels import supervised_runs

LLM_PRESETS = ["vicuna-7b-v1.5", "vicuna-13b-v1.5", "llama-3-8b-instruct", "llama-3.1-8b-instruct",
               "mistral-7b-instruct", "qwen2.5-7b-instruct", "qwen2.5-0.5b-instruct", "phi-3-mini", "gemma-2-2b"]
VISION_PRESETS = ["clip-vit-l-14-336", "clip-vit-l-14", "siglip-so400m-384", "siglip2-so400m-384", "dinov2-l",
                  "dinov2-reg-l", "dinosiglip-384"]
RECORD = {"id": "f1", "image": "a.png", "conversations": [
    {"from": "human", "value": "What color is the circle?\n<image>"}, {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And the square?"}, {"from": "gpt", "value": "It is blue."}]}


def _image(data_dir: Path) -> Image.Image:
    return Image.open(next((data_dir / "shapes" / "images" / "test").glob("*.png"))).convert("RGB")


def _llm_family(option: str, compose_config, data_dir: Path, tmp_path: Path):
    """The preset's tokenizer config and template on a family tokenizer, and a tiny model of the family."""
    cfg = compose_config(f"model/llm={option}")
    hub_id = cfg.model.llm.name_or_path
    folder = family_tokenizer(data_dir / "tokenizer", hub_id, tmp_path / "tokenizer")
    tokenizer = instantiate(cfg.model.llm.tokenizer, name_or_path=str(folder))  # the preset's pad choice
    template = instantiate(cfg.model.llm.template)
    torch.manual_seed(0)
    vision = tiny_tower("openai/clip-vit-large-patch14-336")
    model = LlavaModel(vision, MLPProjector, tiny_llm(hub_id, tokenizer), cfg.model.llm.block_class)
    return cfg, tokenizer, template, model


def _batch(model: LlavaModel, tokenizer, template, transform: ImageTransform, image: Image.Image) -> dict:
    conversation = parse_record(RECORD, "mem.json", 0)
    tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, model.tokens_per_image,
                               add_special_tokens=template.add_special_tokens)
    ids = torch.tensor([tokens.input_ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([tokens.labels]),
            "pixel_values": transform(image).unsqueeze(0), "images_per_sample": torch.tensor([1])}


def _trains(model: LlavaModel, batch: dict) -> None:
    """A few optimizer steps on one batch lower its loss, and every trained parameter gets a finite gradient."""
    model.vision.requires_grad_(False)
    trained = [p for part in (model.projector, model.llm) for p in part.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def _exported_logits_match(model: LlavaModel, tokenizer, template, batch: dict, out: Path) -> None:
    export(model.eval(), tokenizer, out, template)
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids = batch["input_ids"]
    hf_ids = torch.where(ids == IMAGE_TOKEN_ID, torch.full_like(ids, hf.config.image_token_id), ids)
    with torch.no_grad():
        ours = model(ids, batch["attention_mask"], batch["pixel_values"], batch["images_per_sample"])["logits"]
        theirs = hf(input_ids=hf_ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(theirs[..., : ours.shape[-1]], ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("option", LLM_PRESETS)
def test_llm_family_masks_exactly_the_assistant_turns(option, compose_config, data_dir, tmp_path) -> None:
    _, tokenizer, template, model = _llm_family(option, compose_config, data_dir, tmp_path)
    conversation = parse_record(RECORD, "mem.json", 0)
    segments = template.segments(conversation.messages, tokenizer)
    tokens = tokenize_segments(segments, tokenizer, model.tokens_per_image, add_special_tokens=template.add_special_tokens)
    end = template.stop_token(tokenizer)
    prefix = " " if isinstance(template, VicunaTemplate) else ""
    assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == [f"{prefix}Red.{end}", f"{prefix}It is blue.{end}"]
    assert tokens.input_ids.count(IMAGE_TOKEN_ID) == model.tokens_per_image
    if isinstance(template, ChatTemplate):  # nothing of the family's own rendering is lost or added
        chat = [{"role": m.role, "content": m.content} for m in conversation.messages]
        assert "".join(s.text for s in segments) == tokenizer.apply_chat_template(chat, tokenize=False)
        prompt = template.segments(conversation.messages[:1], tokenizer, add_generation_prompt=True)
        assert not any(s.supervised for s in prompt)
        assert "".join(s.text for s in prompt) == tokenizer.apply_chat_template(chat[:1], tokenize=False,
                                                                                 add_generation_prompt=True)


@pytest.mark.parametrize("option", LLM_PRESETS)
def test_llm_family_trains_and_exports(option, compose_config, data_dir, tmp_path) -> None:
    cfg, tokenizer, template, model = _llm_family(option, compose_config, data_dir, tmp_path)
    assert [block.__name__ for block in model.llm_block_classes] == [cfg.model.llm.block_class.rsplit(".", 1)[1]]
    assert any(isinstance(module, model.llm_block_classes[0]) for module in model.llm.modules())
    batch = _batch(model, tokenizer, template, ImageTransform(model.vision.image_processor), _image(data_dir))
    _trains(model, batch)
    if getattr(model.llm.config, "final_logit_softcapping", None):  # Gemma-2
        with pytest.raises(ExportError, match="final_logit_softcapping"):
            export(model, tokenizer, tmp_path / "hf")
    else:
        _exported_logits_match(model, tokenizer, template, batch, tmp_path / "hf")


@pytest.mark.parametrize(("option", "message"), [
    ("gemma-2-2b", "System role not supported"),
    ("mistral-7b-instruct", "roles must alternate"),
])
def test_family_template_refusing_a_system_turn_says_so(option, message, compose_config, data_dir, tmp_path) -> None:
    _, tokenizer, template, _ = _llm_family(option, compose_config, data_dir, tmp_path)
    record = {**RECORD, "conversations": [{"from": "system", "value": "Be brief."}, *RECORD["conversations"]]}
    with pytest.raises(ValueError, match=f"chat template refuses the conversation: .*{message}"):
        template.segments(parse_record(record, "mem.json", 0).messages, tokenizer)


def _vision_family(option: str, compose_config) -> tuple[object, FusedVisionEncoder | object]:
    vision_cfg = compose_config(f"model/vision={option}").model.vision
    torch.manual_seed(0)
    if "encoders" in vision_cfg:
        towers = {name: tiny_tower(tower.name_or_path, 32 + 16 * index, tower.block_class, tower.select_feature)
                  for index, (name, tower) in enumerate(vision_cfg.encoders.items())}
        return vision_cfg, FusedVisionEncoder(towers)
    return vision_cfg, tiny_tower(vision_cfg.name_or_path, 32, vision_cfg.block_class, vision_cfg.select_feature)


# tokens a tower puts before its patches: CLS (CLIP, DINOv2), none (SigLIP), CLS + 4 registers
PREFIX_TOKENS = {"clip-vit-l-14-336": 1, "clip-vit-l-14": 1, "siglip-so400m-384": 0, "siglip2-so400m-384": 0,
                 "dinov2-l": 1, "dinov2-reg-l": 5}


@pytest.mark.parametrize("option", [option for option in VISION_PRESETS if option in PREFIX_TOKENS])
def test_vision_family_selects_the_patch_features(option, compose_config) -> None:
    _, encoder = _vision_family(option, compose_config)
    assert encoder.num_prefix_tokens == PREFIX_TOKENS[option]
    assert encoder.num_image_tokens == (TINY_IMAGE // 14) ** 2
    pixels = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE)
    hidden = encoder.tower(pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(encoder(pixels), hidden[:, PREFIX_TOKENS[option]:])
    assert any(isinstance(module, encoder.block_classes[0]) for module in encoder.tower.modules())


@pytest.mark.parametrize("option", VISION_PRESETS)
def test_vision_family_trains_and_exports(option, compose_config, data_dir, tmp_path) -> None:
    _, vision = _vision_family(option, compose_config)
    tokenizer = instantiate(compose_config().model.llm.tokenizer)
    llm = causal_lm_from_config("llama", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                          "num_attention_heads": 4}, tokenizer)
    model = LlavaModel(vision, MLPProjector, llm)
    assert model.projector[0].in_features == vision.hidden_size
    batch = _batch(model, tokenizer, ChatTemplate(), ImageTransform(vision.image_processor), _image(data_dir))
    assert batch["pixel_values"].shape[-3:] == (3 * len(getattr(vision, "encoders", [0])), TINY_IMAGE, TINY_IMAGE)
    _trains(model, batch)
    if option == "dinov2-reg-l":
        with pytest.raises(ExportError, match="5 tokens before the patches"):
            export(model, tokenizer, tmp_path / "hf")
    elif isinstance(vision, FusedVisionEncoder):
        with pytest.raises(ExportError, match="fuses several towers"):
            export(model, tokenizer, tmp_path / "hf")
    else:
        _exported_logits_match(model, tokenizer, ChatTemplate(), batch, tmp_path / "hf")
