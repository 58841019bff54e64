"""The chat engine (prompts in the model's template, streaming, context limits) and the terminal chat, driven
through a pseudo-terminal as a person types."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava_pl.chat_engine import ChatInputError, ChatModel, Conversation, Sampling, open_image
from llava_pl.constants import IMAGE_TOKEN_ID
from llava_pl.generate import Answerer, prompt_ids
from tests.conftest import CONF_DIR
from tests.demo_checkpoint import demo_checkpoint, draw_shapes, seeded_checkpoints  # noqa: F401  (a fixture)

GREEDY = Sampling(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def chat(demo_checkpoint: Path) -> ChatModel:  # noqa: F811
    return ChatModel.from_path(demo_checkpoint, device="cpu")


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    return draw_shapes(tmp_path / "shapes.png")


def _conversation(chat: ChatModel, picture: Path) -> Conversation:
    return Conversation(chat.image_tensor(open_image(picture)))


def test_first_question_is_prompted_as_prediction_prompts_it(chat: ChatModel, picture: Path) -> None:
    loaded = chat.loaded
    expected = prompt_ids("What is red?", loaded.template, loaded.tokenizer, loaded.model.tokens_per_image)
    assert chat.prompt_ids(_conversation(chat, picture), "What is red?") == expected.tolist()


def test_later_turns_extend_the_conversation_with_one_image(chat: ChatModel, picture: Path) -> None:
    conversation = _conversation(chat, picture)
    first = chat.prompt_ids(conversation, "What is red?")
    conversation.turns.append(("What is red?", "the circle"))
    second = chat.prompt_ids(conversation, "And blue?")
    assert second[: len(first)] == first  # the first prompt, then the answer and the next question
    assert second.count(IMAGE_TOKEN_ID) == chat.loaded.model.tokens_per_image
    text = chat.loaded.tokenizer.decode([token for token in second if token >= 0])
    assert text.index("What is red?") < text.index("the circle") < text.index("And blue?")
    conversation.reset()
    assert chat.prompt_ids(conversation, "What is red?") == first


def test_streamed_answer_is_the_batch_answer_and_is_remembered(chat: ChatModel, picture: Path) -> None:
    conversation = _conversation(chat, picture)
    pieces = list(chat.answer(conversation, "What color is the circle?", GREEDY))
    loaded = chat.loaded
    batch = Answerer(loaded.model, loaded.tokenizer, loaded.template, max_new_tokens=8)
    expected = batch(["What color is the circle?"], [conversation.image])[0]
    assert len(pieces) > 1 and "".join(pieces).strip() == expected
    assert conversation.turns == [("What color is the circle?", expected)]


def test_closing_an_answer_stops_generation_and_keeps_what_was_said(chat: ChatModel, picture: Path) -> None:
    conversation = _conversation(chat, picture)
    answer = chat.answer(conversation, "Describe the image.", Sampling(temperature=1.0, top_p=1.0, max_new_tokens=400))
    first = next(answer)
    answer.close()
    assert conversation.turns == [("Describe the image.", first.strip())]


def test_text_only_conversation_has_no_image_positions(chat: ChatModel) -> None:
    conversation = Conversation()
    assert IMAGE_TOKEN_ID not in chat.prompt_ids(conversation, "Hello?")
    list(chat.answer(conversation, "Hello?", GREEDY))
    assert len(conversation.turns) == 1


def test_oldest_turns_give_way_to_the_context_limit(chat: ChatModel, picture: Path, monkeypatch) -> None:
    conversation = _conversation(chat, picture)
    conversation.turns += [(f"question {n}?", "word " * 30) for n in range(4)]
    alone = len(chat.prompt_ids(Conversation(conversation.image), "Last?"))
    monkeypatch.setattr(chat, "context_length", alone + 80)
    ids, max_new = chat.fit_context(conversation, "Last?", 16)
    assert 0 < len(conversation.turns) < 4 and conversation.turns[-1][0] == "question 3?"
    assert len(ids) + max_new <= alone + 80 and max_new == 16
    monkeypatch.setattr(chat, "context_length", alone)
    with pytest.raises(ChatInputError, match=f"{alone} tokens long with the image; the model reads at most {alone}"):
        chat.fit_context(conversation, "Last?", 16)


def test_bad_input_is_refused_with_a_reason(chat: ChatModel, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ChatInputError, match="notes.txt: not an image"):
        open_image(tmp_path / "notes.txt")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ChatInputError, match="big.png: the image is 300x200 = 60,000 pixels, more than the 50,000"):
        open_image(tmp_path / "big.png", max_pixels=50_000)
    with pytest.raises(ChatInputError, match="no such file"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ChatInputError, match="empty"):
        list(chat.answer(Conversation(), "   ", GREEDY))
    with pytest.raises(ChatInputError, match="top_p"):
        Sampling(top_p=0.0)


def test_plain_template_answers_each_question_alone(demo_checkpoint: Path, picture: Path) -> None:  # noqa: F811
    chat = ChatModel.from_path(demo_checkpoint, {"_target_": "llava_pl.data.templates.PlainTemplate"}, device="cpu")
    conversation = _conversation(chat, picture)
    conversation.turns.append(("What is red?", "the circle"))
    assert not chat.remembers_turns
    assert chat.prompt_ids(conversation, "And blue?") == chat.prompt_ids(Conversation(conversation.image), "x")


def _remembering_checkpoint(data_dir: Path, folder: Path, picture: Path) -> tuple[ChatModel, Path, str, list[str]]:
    """A random demo checkpoint whose answer to a follow-up question changes when the first exchange
    ("What color is the circle?") comes before it, so a chat's second answer shows whether it remembered the
    first. Random weights often answer everything alike, so this tries a few seeds and follow-ups. Returns the
    chat, the checkpoint, the follow-up and the greedy answers to the first question and then the follow-up."""
    follow_ups = ("Where is the square?", "How many shapes are in the image?", "What shape is the blue object?")
    for checkpoint, chat in seeded_checkpoints(data_dir, folder, 6):

        def answers(*questions: str) -> list[str]:
            conversation = _conversation(chat, picture)
            return ["".join(chat.answer(conversation, q, GREEDY)).strip() for q in questions]

        for follow_up in follow_ups:
            exchange = answers("What color is the circle?", follow_up)
            if exchange[1] != answers(follow_up)[0]:
                return chat, checkpoint, follow_up, exchange
    raise AssertionError("no seed gives a follow-up answered differently with and without the first exchange")


@pytest.mark.slow
def test_terminal_chat_in_a_pseudo_terminal(data_dir: Path, tmp_path: Path) -> None:
    """Types questions and commands into ``python -m llava_pl.chat`` running on a pty, as a person would."""
    pexpect = pytest.importorskip("pexpect", reason='the pty test needs pexpect: pip install -e ".[test]"')
    picture = draw_shapes(tmp_path / "shapes.png")
    other = draw_shapes(tmp_path / "other.png", size=(40, 40))
    (tmp_path / "notes.txt").write_text("not a picture")
    # what the model says, worked out here with the same greedy settings
    chat, checkpoint, follow_up, (first, second) = _remembering_checkpoint(data_dir, tmp_path, picture)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "dumb"}
    session = pexpect.spawn(
        sys.executable,
        ["-m", "llava_pl.chat", f"model={checkpoint}", f"image={picture}", "temperature=0", "max_new_tokens=8"],
        cwd=str(CONF_DIR.parents[1]), env=env, encoding="utf-8", timeout=60, dimensions=(40, 200),
    )
    session.logfile_read = (tmp_path / "transcript.txt").open("w")

    def ask(line: str) -> str:
        session.sendline(line)
        session.expect_exact("Model: ")
        session.expect_exact("You: ")
        return session.before.strip()

    try:
        session.expect_exact("You: ")
        assert "template ChatTemplate" in session.before and "image " in session.before
        assert ask("What color is the circle?") == first
        assert ask(follow_up) == second  # the first exchange is part of the prompt
        session.sendline("/reset")
        session.expect_exact("[conversation cleared]")
        assert ask("What color is the circle?") == first
        session.sendline(f"/image {tmp_path / 'notes.txt'}")
        session.expect_exact("notes.txt: not an image")
        session.sendline("/image")
        session.expect_exact("[usage: /image PATH]")
        session.sendline(f"/image {other}")
        session.expect_exact("40x40; new conversation]")
        session.expect_exact("You: ")
        expected = "".join(chat.answer(_conversation(chat, other), "What color is the circle?", GREEDY)).strip()
        assert ask("What color is the circle?") == expected
        session.sendline("/quit")
        session.expect(pexpect.EOF)
    finally:
        session.close(force=True)
    assert session.exitstatus == 0, (tmp_path / "transcript.txt").read_text()
