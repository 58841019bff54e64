"""An exported folder prompted the standard Hugging Face way gives the model its training inputs and llava_pl's answers.

``processor.apply_chat_template(messages, add_generation_prompt=True)`` → ``processor(text=..., images=...)`` →
``LlavaForConditionalGeneration.generate``, for a ``vicuna_v1`` model (a Llama SentencePiece tokenizer) and a
``ChatTemplate`` model (the demo's ChatML tokenizer), against ``llava_pl.predict`` on the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from jinja2 import TemplateError
from PIL import Image, ImageDraw
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    LlavaForConditionalGeneration,
)

from llava_pl.checkpoint.load import load_for_inference
from llava_pl.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from llava_pl.data.conversation import Message
from llava_pl.data.hf_chat_template import hf_chat_template, space_after_images
from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import ChatTemplate, PlainTemplate, Segment, VicunaTemplate
from llava_pl.data.tokenization import tokenize_segments
from llava_pl.export import ExportError, export, main as export_main, to_hf_llava
from llava_pl.export_processor import hf_image_processor
from llava_pl.generate import prompt_ids
from llava_pl.model.build import build_model
from llava_pl.predict import predict
from tests.conftest import golden_path
from tests.demo_checkpoint import draw_shapes, save_demo_checkpoint

QUESTIONS = ["What color is the circle?", "Describe the picture."]
NEW_TOKENS = 8
TINY_LLM = ["model.llm.model.config.hidden_size=64", "model.llm.model.config.intermediate_size=128",
            "model.llm.model.config.num_hidden_layers=2", "model.llm.model.config.num_attention_heads=4",
            "model.llm.model.config.num_key_value_heads=4"]


def _vicuna_overrides() -> list[str]:
    """A tiny random Llama with Vicuna's tokenizer (legacy=false, as Vicuna v1.5 ships it) and ``vicuna_v1``."""
    folder = golden_path("tok_legacy_false")
    return [f"model.llm.tokenizer.name_or_path={folder}", "+model.llm.tokenizer.pad_token='<unk>'",
            "model.llm.template._target_=llava_pl.data.templates.VicunaTemplate", *TINY_LLM]


def _draw_portrait(path: Path) -> Path:
    image = Image.new("RGB", (36, 80), "yellow")
    draw = ImageDraw.Draw(image)
    draw.polygon([(18, 6), (4, 40), (32, 40)], fill="green")
    draw.ellipse((6, 50, 30, 74), fill="purple")
    image.save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [draw_shapes(folder / "landscape.png"), _draw_portrait(folder / "portrait.png")]


def _answers_in_words(checkpoint: Path, images: list[Path]) -> bool:
    """Whether ``predict`` answers every test question with some text (random weights may repeat a blank)."""
    return all(predict({"model": str(checkpoint), "image": str(path), "prompt": question,
                        "max_new_tokens": NEW_TOKENS})[0]["answer"] for path, question in zip(images, QUESTIONS))


@pytest.fixture(scope="module", params=["vicuna_v1", "chat_template"])
def exported(request, data_dir: Path, images: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """A random checkpoint of the model kind that answers in words, exported with ``python -m llava_pl.export``;
    its loaded form too."""
    overrides = _vicuna_overrides() if request.param == "vicuna_v1" else []
    folder = tmp_path_factory.mktemp(request.param)
    for seed in range(4):
        checkpoint = save_demo_checkpoint(data_dir, folder / f"seed{seed}", seed=seed, overrides=overrides)
        if _answers_in_words(checkpoint, images):
            break
    else:
        pytest.fail("no seed of four gives a model that answers in words")
    out = folder / "exported"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["llava_pl.export", f"ckpt={checkpoint}", f"out={out}"])
        export_main()
    return request.param, checkpoint, out, load_for_inference(checkpoint)


def _messages(question: str, image: object | None = None) -> list[dict]:
    part = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def _training_text(loaded, question: str) -> str:
    messages = [Message("user", f"{IMAGE_PLACEHOLDER}\n{question}")]
    return "".join(s.text for s in loaded.template.segments(messages, loaded.tokenizer, add_generation_prompt=True))


def test_prompt_ids_and_pixels_are_the_training_ones(exported, images) -> None:
    kind, _, out, loaded = exported
    processor = AutoProcessor.from_pretrained(out)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    for path, question in zip(images, QUESTIONS):
        image = Image.open(path).convert("RGB")
        rendered = processor.apply_chat_template(_messages(question), add_generation_prompt=True)
        expected = _training_text(loaded, question)
        if kind == "vicuna_v1":  # SentencePiece: the space after the image stands for the "▁" of LLaVA's pieces
            assert expected.startswith(VicunaTemplate.DEFAULT_SYSTEM + " USER: <image>\n")
            expected = expected.replace(f"{IMAGE_PLACEHOLDER}\n", f"{IMAGE_PLACEHOLDER} \n")
        assert rendered == expected
        for content in (f"{IMAGE_PLACEHOLDER}\n{question}", f"{question}\n{IMAGE_PLACEHOLDER}"):  # plain strings
            assert processor.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True) == rendered

        inputs = processor(text=rendered, images=image, return_tensors="pt")
        ours = prompt_ids(question, loaded.template, loaded.tokenizer, loaded.model.tokens_per_image)
        assert inputs["input_ids"][0].tolist() == [image_token_id if t == IMAGE_TOKEN_ID else t for t in ours.tolist()]
        torch.testing.assert_close(inputs["pixel_values"][0], loaded.image_transform(image), rtol=0, atol=1e-5)
        assert image.size[0] != image.size[1]  # so the padding is in the comparison

        # the one-call form: the processor reads the image from the message
        one_call = processor.apply_chat_template(_messages(question, image), add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, return_tensors="pt")
        assert torch.equal(one_call["input_ids"], inputs["input_ids"])
        assert torch.equal(one_call["pixel_values"], inputs["pixel_values"])


def test_greedy_answer_is_predicts(exported, images) -> None:
    _, checkpoint, out, loaded = exported
    processor = AutoProcessor.from_pretrained(out)
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    stop_id = loaded.tokenizer.convert_tokens_to_ids(loaded.template.stop_token(loaded.tokenizer))
    for path, question in zip(images, QUESTIONS):
        image = Image.open(path).convert("RGB")
        rendered = processor.apply_chat_template(_messages(question), add_generation_prompt=True)
        inputs = processor(text=rendered, images=image, return_tensors="pt")
        with torch.no_grad():
            theirs = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
            ids = prompt_ids(question, loaded.template, loaded.tokenizer, loaded.model.tokens_per_image)[None]
            pixels = loaded.image_transform(image)[None]
            ours = loaded.model.generate(ids, torch.ones_like(ids), pixels, torch.tensor([1]),
                                         max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stop_id,
                                         pad_token_id=loaded.tokenizer.pad_token_id)[0]
        assert theirs.tolist() == ours.tolist()
        answered = [token for token in theirs.tolist() if token != stop_id]
        assert len(answered) >= 4, theirs  # a real answer to compare, not an immediate stop

        answer = predict({"model": str(checkpoint), "image": str(path), "prompt": question,
                          "max_new_tokens": NEW_TOKENS})[0]["answer"]
        assert answer and answer == processor.tokenizer.decode(theirs, skip_special_tokens=True).strip()


def _conversation() -> list[Message]:
    return [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat is it?"), Message("assistant", "A red disc."),
            Message("user", "And the square?"), Message("assistant", "It is blue.")]


def _hf_messages(messages: list[Message]) -> list[dict]:
    """The same conversation as Hugging Face writes it: the image turn as content parts (text first)."""
    hf = [{"role": m.role, "content": m.content} for m in messages]
    hf[0]["content"] = [{"type": "text", "text": messages[0].content.removeprefix(f"{IMAGE_PLACEHOLDER}\n")},
                        {"type": "image"}]
    return hf


def _sentencepiece_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(golden_path("tok_legacy_false"))
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    return tokenizer


@pytest.mark.parametrize(("template", "tokenizer_kind"), [
    (VicunaTemplate(), "sentencepiece"), (VicunaTemplate(system="Be brief."), "sentencepiece"),
    (PlainTemplate(), "sentencepiece"), (ChatTemplate(), "demo"), (VicunaTemplate(), "demo"),
    (PlainTemplate(begin="<|im_start|>", end="<|im_end|>"), "demo"),
], ids=["vicuna", "vicuna-system", "plain", "chat_template", "vicuna-bpe", "plain-begin-end"])
def test_chat_template_renders_whole_conversations_as_training(template, tokenizer_kind, tokenizer) -> None:
    tokenizer = _sentencepiece_tokenizer() if tokenizer_kind == "sentencepiece" else tokenizer
    messages = _conversation()[:2] if isinstance(template, PlainTemplate) else _conversation()
    segments = template.segments(messages, tokenizer)
    jinja = hf_chat_template(template, tokenizer)
    rendered = tokenizer.apply_chat_template(_hf_messages(messages), chat_template=jinja, tokenize=False)
    expected = "".join(s.text for s in segments)
    if space_after_images(tokenizer):
        assert tokenizer_kind == "sentencepiece"
        expected = expected.replace(IMAGE_PLACEHOLDER, f"{IMAGE_PLACEHOLDER} ")
    assert rendered == expected
    # llava_pl tokenizes the rendering (an export it loads back) as it tokenized the training conversation
    special = template.add_special_tokens
    assert tokenize_segments([Segment(rendered, False)], tokenizer, 3, add_special_tokens=special).input_ids == \
        tokenize_segments(segments, tokenizer, 3, add_special_tokens=special).input_ids
    # and Hugging Face's whole-prompt tokenization gives the same ids
    whole = tokenizer(rendered.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * 3), add_special_tokens=special)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert [IMAGE_TOKEN_ID if t == image_id else t for t in whole["input_ids"]] == \
        tokenize_segments(segments, tokenizer, 3, add_special_tokens=special).input_ids


def test_unknown_content_part_is_refused(tokenizer) -> None:
    jinja = hf_chat_template(ChatTemplate(), tokenizer)
    with pytest.raises(TemplateError, match="text and image content parts, not video"):
        tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], chat_template=jinja,
                                      tokenize=False)


PROCESSORS = {
    "clip": {"size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48}},
    "crop-inside": {"size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56}},  # DINOv2's way
}


# every pair but crop-inside with resize: stretching to the crop size and resizing again has no Hugging Face image
# processor, and the export refuses it (test_export_refuses_what_it_cannot_reproduce)
@pytest.mark.parametrize(("name", "aspect"), [("clip", "pad"), ("clip", "crop"), ("clip", "resize"),
                                              ("crop-inside", "pad"), ("crop-inside", "crop")])
def test_saved_image_processor_reproduces_the_aspect(name, aspect, images, tmp_path) -> None:
    transform = ImageTransform(CLIPImageProcessor(**PROCESSORS[name]), aspect)
    hf_image_processor(transform).save_pretrained(tmp_path)
    saved = AutoImageProcessor.from_pretrained(tmp_path)
    for path in images:
        image = Image.open(path).convert("RGB")
        torch.testing.assert_close(saved(images=image, return_tensors="pt")["pixel_values"][0], transform(image),
                                   rtol=0, atol=1e-5)


def test_export_refuses_what_it_cannot_reproduce(compose_config) -> None:
    cfg = compose_config()
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer).eval()
    model.vision.image_processor = CLIPImageProcessor(**PROCESSORS["crop-inside"])
    with pytest.raises(ExportError, match="does not reproduce llava_pl's 'resize' preprocessing"):
        to_hf_llava(model, tokenizer, image_aspect="resize")
    tokenizer.chat_template = None
    with pytest.raises(ExportError, match="no chat template: pass the template the model trained with"):
        to_hf_llava(model, tokenizer)


@pytest.mark.parametrize("aspect", ["pad", "crop", "resize"])
def test_llava_pl_reads_an_export_with_its_aspect(aspect, compose_config, images, tmp_path) -> None:
    """llava_pl's own predict and chat on an exported folder see the pixels the checkpoint trained with."""
    cfg = compose_config()
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    model = build_model(cfg.model, tokenizer).eval()
    export(model, tokenizer, tmp_path / "hf", image_aspect=aspect)
    loaded = load_for_inference(tmp_path / "hf")
    trained = ImageTransform(model.vision.image_processor, aspect)
    for path in images:
        image = Image.open(path).convert("RGB")
        torch.testing.assert_close(loaded.image_transform(image), trained(image), rtol=0, atol=1e-5)
