"""Instruction data, its output: a chat LLM's reply parsed into a LLaVA record, or rejected with its reason."""

from __future__ import annotations

import pytest

from llava_pl.data.conversation import parse_record
from llava_pl.data.instruct.context import ImageContext
from llava_pl.data.instruct.parse import ReplyError, parse_reply
from llava_pl.data.instruct.prompts import KindPrompt
from tests.instruct_helpers import excerpt_contexts, kind_prompts


@pytest.fixture(scope="module")
def prompts() -> dict[str, KindPrompt]:
    return kind_prompts()


@pytest.fixture(scope="module")
def contexts() -> list[ImageContext]:
    return excerpt_contexts()


def record_for(text: str, prompt: KindPrompt, context, truncated: bool = False, salvage: bool = True) -> dict:
    return parse_reply(text, prompt, context, seed=0, truncated=truncated, salvage_truncated=salvage)


def test_a_well_formed_conversation_becomes_alternating_turns_with_the_image_first(prompts, contexts) -> None:
    reply = ("Question: What animal is on the desk?\nAnswer: A cat, sitting next to an open laptop.\n\n"
             "**Question:** What colour is the laptop?\n**Answer:** It is black.\n"
             "question: Are there books?\nanswer: Yes, several books\nare stacked on the right.")
    record = record_for(reply, prompts["conversation"], contexts[0])
    assert record["id"] == "000000506095" and record["image"] == "000000506095.jpg"
    assert record["conversations"] == [
        {"from": "human", "value": "<image>\nWhat animal is on the desk?"},
        {"from": "gpt", "value": "A cat, sitting next to an open laptop."},
        {"from": "human", "value": "What colour is the laptop?"},
        {"from": "gpt", "value": "It is black."},
        {"from": "human", "value": "Are there books?"},
        {"from": "gpt", "value": "Yes, several books\nare stacked on the right."},
    ]
    conversation = parse_record(record, "generated.json", 0)  # what the training data reads
    assert [m.role for m in conversation.messages] == ["user", "assistant"] * 3
    assert conversation.images == ("000000506095.jpg",)


def test_a_description_is_asked_by_one_instruction_per_image_the_same_every_run(prompts, contexts) -> None:
    detail = prompts["detail"]
    text = "A small cat sits on a wooden desk beside an open black laptop, with books stacked behind it."
    first = record_for(text, detail, contexts[0])
    question = first["conversations"][0]["value"]
    assert question.startswith("<image>\n") and question.removeprefix("<image>\n") in detail.instructions
    assert first["conversations"][1] == {"from": "gpt", "value": text}
    assert record_for(text, detail, contexts[0]) == first
    chosen = {record_for(text, detail, c)["conversations"][0]["value"] for c in contexts}
    assert len(chosen) > 1  # the instruction varies over images


@pytest.mark.parametrize("kind, reply, reason", [
    ("conversation", "Sure! Here is a conversation.\nQuestion: What is there?\nAnswer: A cat.\nQuestion: Where?\n"
                     "Answer: On a desk.", "text_outside_turns"),
    ("conversation", "The photo shows a cat on a desk.", "no_turns"),
    ("conversation", "Question: What is there?\nQuestion: Where?\nAnswer: On a desk.\nAnswer: A cat.",
     "not_alternating"),
    ("conversation", "Answer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.", "not_alternating"),
    ("conversation", "Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?", "unanswered_question"),
    ("conversation", "Question: What is there?\nAnswer:\nQuestion: Where?\nAnswer: On a desk.", "empty_turn"),
    ("conversation", "Question: What is there?\nAnswer: A cat.", "too_few_pairs"),
    ("conversation", "Question: What is there?\nAnswer: A cat.\nQuestion: what is  there?\nAnswer: A cat.",
     "repeated_question"),
    ("conversation", "Question: What is there?\nAnswer: As the caption says, a cat.\nQuestion: Where?\nAnswer: Desk.",
     "rejected_phrase"),
    ("conversation", "Question: What is in <image>?\nAnswer: A cat.\nQuestion: Where?\nAnswer: Desk.",
     "image_placeholder"),
    ("reasoning", "Question: Why is the cat there?\nAnswer: It is warm.\nQuestion: And?\nAnswer: Yes.",
     "too_many_pairs"),
    ("reasoning", "Question: Is the person who was eating this meal likely to come back to it?\nAnswer: Yes.",
     "copied_example"),
    ("detail", "A person in a bright yellow raincoat is walking along a wet city street on a rainy day.",
     "copied_example"),
    ("detail", "", "empty_reply"),
    ("detail", "A cat.", "too_short"),
    ("detail", "Question: What is in the image?\nAnswer: A cat sits on a desk next to a laptop and books.",
     "text_outside_turns"),
])
def test_a_malformed_reply_is_rejected_with_its_reason(prompts, contexts, kind, reply, reason) -> None:
    with pytest.raises(ReplyError) as error:
        record_for(reply, prompts[kind], contexts[0])
    assert error.value.reason == reason


def test_a_truncated_reply_keeps_only_its_complete_pairs_or_is_rejected(prompts, contexts) -> None:
    conversation = prompts["conversation"]
    cut = ("Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.\n"
           "Question: What colour is the laptop?\nAnswer: It is bla")
    record = record_for(cut, conversation, contexts[0], truncated=True)
    assert [t["value"] for t in record["conversations"]] == [
        "<image>\nWhat is there?", "A cat.", "Where is it?", "On a desk."]
    cut_in_question = "Question: What is there?\nAnswer: A cat.\nQuestion: Where is it?\nAnswer: On a desk.\nQuest"
    # the last answer runs into the cut-off marker, so it is dropped too: one pair is left, two are wanted
    with pytest.raises(ReplyError, match="too_few_pairs"):
        record_for(cut_in_question, conversation, contexts[0], truncated=True)
    with pytest.raises(ReplyError, match="truncated"):
        record_for(cut, conversation, contexts[0], truncated=True, salvage=False)
    with pytest.raises(ReplyError, match="truncated: the token limit came before the first complete pair"):
        record_for("Question: What is there?\nAnswer: A c", conversation, contexts[0], truncated=True)
    with pytest.raises(ReplyError, match="truncated"):
        record_for("A small cat sits on a wooden desk beside an open", prompts["detail"], contexts[0], truncated=True)
