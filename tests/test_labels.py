"""Conversations → tokens and labels: the supervised tokens are exactly the assistant turns, per template."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import processors

from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.conversation import Message, SampleError, parse_record
from llava_pl.data.templates import ChatTemplate, PlainTemplate, Segment, VicunaTemplate
from llava_pl.data.tokenization import tokenize_segments
from tests.conftest import formats_file

TOKENS_PER_IMAGE = 5


def supervised_runs(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    """Decoded text of each contiguous run of supervised positions."""
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            assert label == token, "a supervised label must be the token at its own position"
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def _record(*turns: str, image: str | None = "a.png") -> dict:
    roles = ["human", "gpt"]
    record = {"id": "s1", "conversations": [{"from": roles[i % 2], "value": v} for i, v in enumerate(turns)]}
    if image:
        record["image"] = image
    return record


MULTI_TURN = _record("What color is the circle?\n<image>", "Red.", "And the square?", "It is blue.")


@pytest.mark.parametrize("template", [ChatTemplate(), VicunaTemplate()], ids=["chat_template", "vicuna_v1"])
def test_supervised_tokens_are_the_assistant_turns(tokenizer, template) -> None:
    conversation = parse_record(MULTI_TURN, "mem.json", 0)
    tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, TOKENS_PER_IMAGE)
    end = tokenizer.eos_token
    prefix = " " if isinstance(template, VicunaTemplate) else ""
    assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == [f"{prefix}Red.{end}", f"{prefix}It is blue.{end}"]
    assert tokens.input_ids.count(IMAGE_TOKEN_ID) == TOKENS_PER_IMAGE
    # the image goes first in its turn, whichever end of the text it was written at
    text = tokenizer.decode([t for t in tokens.input_ids if t != IMAGE_TOKEN_ID], skip_special_tokens=False)
    assert "What color is the circle?" in text and "And the square?" in text


def test_chat_template_renders_the_tokenizer_template(tokenizer) -> None:
    conversation = parse_record(MULTI_TURN, "mem.json", 0)
    segments = ChatTemplate().segments(conversation.messages, tokenizer)
    chat = [{"role": m.role, "content": m.content} for m in conversation.messages]
    assert "".join(s.text for s in segments) == tokenizer.apply_chat_template(chat, tokenize=False)
    prompt = ChatTemplate().segments(conversation.messages[:1], tokenizer, add_generation_prompt=True)
    assert prompt[-1].text.endswith("<|im_start|>assistant\n") and not any(s.supervised for s in prompt)


def test_plain_template_supervises_only_the_caption(tokenizer) -> None:
    record = _record("Describe the image briefly.\n<image>", "A red circle at the top.")
    conversation = parse_record(record, "mem.json", 0)
    for template, end in ((PlainTemplate(), "\n"), (PlainTemplate(end=tokenizer.eos_token), tokenizer.eos_token)):
        tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, TOKENS_PER_IMAGE,
                                   add_special_tokens=template.add_special_tokens)
        assert tokens.input_ids[:TOKENS_PER_IMAGE] == [IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE
        assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == [f"A red circle at the top.{end}"]
        assert "Describe" not in tokenizer.decode([t for t in tokens.input_ids if t >= 0])
        # generation stops on the token that ended every caption in training
        assert tokens.input_ids[-1] == tokenizer.convert_tokens_to_ids(template.stop_token(tokenizer))


def test_plain_template_begin_comes_before_the_image_unsupervised(tokenizer) -> None:
    conversation = parse_record(_record("<image>\nDescribe.", "A red circle."), "mem.json", 0)
    template = PlainTemplate(begin="<|im_start|>", end=tokenizer.eos_token)
    tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, TOKENS_PER_IMAGE,
                               add_special_tokens=template.add_special_tokens)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokens.input_ids[: 1 + TOKENS_PER_IMAGE] == [start] + [IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE
    assert tokens.labels[0] == IGNORE_INDEX
    assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == [f"A red circle.{tokenizer.eos_token}"]


def test_plain_template_end_must_be_one_token(tokenizer) -> None:
    with pytest.raises(ValueError, match="end ' The end.' is not one token after text"):
        PlainTemplate(end=" The end.").stop_token(tokenizer)
    with pytest.raises(ValueError, match="must not be empty"):
        PlainTemplate(end="")


def test_non_prefix_stable_chat_template_is_refused(tokenizer) -> None:
    class Reordering:
        chat_template = "x"
        eos_token = "<|im_end|>"

        def apply_chat_template(self, chat, tokenize, add_generation_prompt):
            return "".join(m["content"] for m in reversed(chat))

    messages = [Message("user", "hi"), Message("assistant", "there")]
    with pytest.raises(ValueError, match="not prefix-stable"):
        ChatTemplate().segments(messages, Reordering())


def test_segments_tokenize_as_one_prompt_after_the_tokenizers_own_bos(tokenizer) -> None:
    """A segment boundary inside a word does not split it (the word goes to the later segment), the text is cut
    only at images, and the special tokens the tokenizer adds open the sequence once, unsupervised."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    bos_adding = copy.deepcopy(tokenizer)
    bos_adding.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", start)])
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    red, circle = words("red circle")
    segments = [Segment("red cir", False), Segment("cle<image>", True), Segment(" at the<image> top", True)]
    tokens = tokenize_segments(segments, bos_adding, 2, add_special_tokens=True)
    image, ignore = [IMAGE_TOKEN_ID] * 2, [IGNORE_INDEX] * 2
    assert tokens.input_ids == [start, red, circle, *image, *words(" at the"), *image, *words(" top")]
    assert tokens.labels == [IGNORE_INDEX, IGNORE_INDEX, circle, *ignore, *words(" at the"), *ignore, *words(" top")]
    assert tokenize_segments(segments, bos_adding, 2).input_ids == tokens.input_ids[1:]


def test_truncation_never_cuts_inside_an_image(tokenizer) -> None:
    segments = [Segment("a <image> b <image>", False), Segment(" caption", True)]
    full = tokenize_segments(segments, tokenizer, TOKENS_PER_IMAGE)
    second_image = [i for i, t in enumerate(full.input_ids) if t == IMAGE_TOKEN_ID][TOKENS_PER_IMAGE]
    cut = tokenize_segments(segments, tokenizer, TOKENS_PER_IMAGE, max_length=second_image + 2)
    assert cut.input_ids == full.input_ids[:second_image]  # back to the start of the second image
    assert cut.num_images == 1 and full.num_images == 2
    assert len(cut.labels) == len(cut.input_ids)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (_record("<image>\n<image> two?", "no"), "2 <image> placeholder\\(s\\) but 1 image"),
        (_record("no placeholder", "no"), "0 <image> placeholder\\(s\\) but 1 image"),
        (_record("<image> hi", "there", "more?"), "last turn is not an assistant turn"),
        ({"id": "s1", "image": "a.png", "conversations": [{"from": "gpt", "value": "<image>"}]}, "expected user"),
    ],
)
def test_malformed_records_name_file_and_sample(record: dict, problem: str) -> None:
    with pytest.raises(SampleError, match=f"mem.json: sample s1: .*{problem}"):
        parse_record(record, "mem.json", 0)


def test_missing_image_names_file_sample_and_path(tmp_path, tokenizer) -> None:
    from transformers import CLIPImageProcessor

    from llava_pl.data.dataset import LlavaDataset
    from llava_pl.data.images import ImageTransform

    path = tmp_path / "data.json"
    path.write_text(json.dumps([_record("<image>\nWhat?", "Nothing.", image="gone.png") | {"id": "lost-1"}]))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    dataset = LlavaDataset(path, tmp_path, tokenizer, ChatTemplate(), ImageTransform(processor), TOKENS_PER_IMAGE)
    with pytest.raises(SampleError, match=f"{path}: sample lost-1: image file not found: .*gone.png"):
        dataset[0]


def test_real_llava_instruct_records(tokenizer) -> None:
    records = json.loads(formats_file("llava_instruct_150k.sample.json").read_text())
    for index, record in enumerate(records):
        conversation = parse_record(record, "llava_instruct_150k", index)
        assert conversation.messages[0].content.startswith("<image>\n")
        answers = [m.content for m in conversation.messages if m.role == "assistant"]
        for template, prefix in ((ChatTemplate(), ""), (VicunaTemplate(), " ")):
            tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, TOKENS_PER_IMAGE)
            expected = [f"{prefix}{answer}{tokenizer.eos_token}" for answer in answers]
            assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == expected, record["id"]


def test_real_pretrain_captions(tokenizer) -> None:
    records = json.loads(formats_file("blip_laion_cc_sbu_558k.sample.json").read_text())
    assert any(r["conversations"][0]["value"].endswith("<image>") for r in records)  # both placements present
    for index, record in enumerate(records):
        conversation = parse_record(record, "blip_558k", index)
        tokens = tokenize_segments(PlainTemplate().segments(conversation.messages, tokenizer), tokenizer, TOKENS_PER_IMAGE)
        assert tokens.input_ids[:TOKENS_PER_IMAGE] == [IMAGE_TOKEN_ID] * TOKENS_PER_IMAGE
        caption = record["conversations"][1]["value"]
        assert supervised_runs(tokenizer, tokens.input_ids, tokens.labels) == [caption + "\n"]


def test_collated_labels_stay_aligned(tokenizer) -> None:
    from llava_pl.data.collate import LlavaCollator

    samples = [
        {"id": "a", "input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3]),
         "pixel_values": torch.zeros(0, 3, 4, 4)},
        {"id": "b", "input_ids": torch.tensor([4]), "labels": torch.tensor([4]), "pixel_values": torch.zeros(2, 3, 4, 4)},
    ]
    right = LlavaCollator(pad_token_id=0)(samples)
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert right["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["images_per_sample"].tolist() == [0, 2] and right["pixel_values"].shape[0] == 2
    left = LlavaCollator(pad_token_id=0, padding_side="left")(samples)
    assert left["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
