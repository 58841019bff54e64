"""Tests for the texts of the demo's shapes data set (records, answers, test questions, corpus) and for the demo
tokenizer trained on them."""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest

from llava_pl.demo.dataset import INSTRUCT_MIX, generate_shapes_dataset
from llava_pl.demo.questions import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX
from llava_pl.demo.scenes import COLORS, KINDS
from llava_pl.demo.tokenizer import IM_END, IM_START, PAD_TOKEN, SPECIAL_TOKENS, build_demo_tokenizer
from tests.demo_data_helpers import SMALL, expected_short_answer, files, held_out, load, meta_by_image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SMALL)


@pytest.fixture(scope="module")
def tokenizer_dir(dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_demo_tokenizer(tmp_path_factory.mktemp("tok"), dataset / "corpus.txt", vocab_size=1024)


def test_conversation_structure(dataset: pathlib.Path) -> None:
    for split in ("train", "val"):
        captions = load(dataset, f"captions_{split}.json")
        instruct = load(dataset, f"instruct_{split}.json")
        assert len(captions) == SMALL[f"n_{split}"]
        per_image = defaultdict(list)
        for rec in instruct:
            per_image[rec["image"]].append(rec["type"])
        # Every image has one conversation; detail and reasoning records go to a share of the images.
        assert len(per_image) == SMALL[f"n_{split}"]
        assert all(types.count("conversation") == 1 and len(types) == len(set(types)) for types in per_image.values())
        kinds = Counter(rec["type"] for rec in instruct)
        assert set(kinds) == set(INSTRUCT_MIX)
        placements = Counter()
        for rec in captions + instruct:
            assert isinstance(rec["id"], str) and rec["id"]
            conv = rec["conversations"]
            assert len(conv) >= 2 and len(conv) % 2 == 0
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert sum(t["value"].count(IMAGE_TOKEN) for t in conv) == 1
            first = conv[0]["value"]
            assert first.startswith(IMAGE_TOKEN + "\n") or first.endswith("\n" + IMAGE_TOKEN)
            placements[first.startswith(IMAGE_TOKEN)] += 1
            assert all(t["value"].strip() == t["value"] and t["value"] for t in conv)
            if rec.get("type") == "conversation":
                assert 3 <= len(conv) // 2 <= 6
            elif "type" in rec:
                assert len(conv) == 2
        assert placements[True] and placements[False]


def test_instruct_answers_match_meta(dataset: pathlib.Path) -> None:
    meta = meta_by_image(dataset)
    n_short = n_full = 0
    for rec in load(dataset, "instruct_train.json") + load(dataset, "instruct_val.json"):
        if rec["type"] != "conversation":
            continue
        shapes = meta[rec["image"]]
        conv = rec["conversations"]
        for human, gpt in zip(conv[0::2], conv[1::2]):
            question = human["value"].replace(IMAGE_TOKEN, "").strip()
            expected = None
            if question.endswith(SHORT_ANSWER_SUFFIX):
                expected = expected_short_answer(question[: -len(SHORT_ANSWER_SUFFIX)].strip(), shapes)
                assert gpt["value"] == expected, (rec["image"], question)
                n_short += 1
            else:
                expected = expected_short_answer(question, shapes)
                answer = gpt["value"]
                assert answer[0].isupper() and answer.endswith("."), answer
                if expected in ("yes", "no"):
                    assert answer.lower().startswith(expected), (question, answer)
                else:
                    assert re.search(rf"\b{expected}\b", answer), (question, answer)
                n_full += 1
    assert n_short > 10 and n_full > 10


def test_text_only_mentions_present_shapes(dataset: pathlib.Path) -> None:
    meta = meta_by_image(dataset)
    for rec in load(dataset, "captions_train.json") + load(dataset, "instruct_train.json"):
        shapes = meta[rec["image"]]
        answer_text = " ".join(t["value"] for t in rec["conversations"] if t["from"] == "gpt")
        if rec.get("type") == "conversation":
            continue  # existence answers legitimately name absent shapes ("No, there is no red square.")
        named = set(re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(KINDS)})\b", answer_text))
        assert named <= {(s["color"], s["kind"]) for s in shapes}, (rec["image"], answer_text)
        if rec.get("type") in (None, "detail"):
            # Captions and detailed descriptions name every shape with its size.
            for s in shapes:
                assert f"{s['size']} {s['color']} {s['kind']}" in answer_text, (rec["image"], answer_text)


def test_test_questions_match_meta(dataset: pathlib.Path) -> None:
    meta = meta_by_image(dataset)
    questions = held_out(dataset)
    assert len({q["question_id"] for q in questions}) == len(questions)
    per_image = defaultdict(Counter)
    for q in questions:
        assert q["image"].startswith("test/")
        assert IMAGE_TOKEN not in q["text"]
        assert q["text"].endswith(SHORT_ANSWER_SUFFIX)
        question = q["text"][: -len(SHORT_ANSWER_SUFFIX)]
        assert q["answer"] == expected_short_answer(question, meta[q["image"]]), q
        assert q["shapes"] == len(meta[q["image"]]), q
        per_image[q["image"]][q["type"]] += 1
    assert len(per_image) == SMALL["n_test"]
    for counts in per_image.values():
        assert counts["count"] == 1
        assert all(1 <= counts[t] <= 2 for t in ("color", "shape", "position"))


def test_test_answers_are_not_guessable(dataset: pathlib.Path) -> None:
    questions = held_out(dataset)
    colors = Counter(q["answer"] for q in questions if q["type"] == "color")
    kinds = Counter(q["answer"] for q in questions if q["type"] == "shape")
    positions = Counter(q["answer"] for q in questions if q["type"] == "position")
    assert len(colors) >= 5 and max(colors.values()) < 0.4 * sum(colors.values())
    assert len(kinds) >= 4 and max(kinds.values()) < 0.4 * sum(kinds.values())
    assert len(positions) >= 6
    color_given_kind = defaultdict(set)
    for q in questions:
        if q["type"] == "color":
            color_given_kind[re.match(r"What color is the (\w+)\?", q["text"])[1]].add(q["answer"])
    assert all(len(v) >= 2 for v in color_given_kind.values()), color_given_kind


def test_short_question_wording_shared_with_training(dataset: pathlib.Path) -> None:
    train_questions = {
        t["value"].replace(IMAGE_TOKEN, "").strip()
        for rec in load(dataset, "instruct_train.json")
        for t in rec["conversations"][0::2]
    }
    names = re.compile(r"\b(" + "|".join(list(COLORS) + list(KINDS)) + r")\b")

    def templates(texts: Iterable[str]) -> set[str]:
        return {names.sub("X", t) for t in texts}

    test_templates = templates(q["text"] for q in held_out(dataset))
    assert test_templates <= templates(train_questions)


def test_corpus_covers_texts(dataset: pathlib.Path) -> None:
    corpus = set((dataset / "corpus.txt").read_text(encoding="utf-8").splitlines())
    assert all(line and IMAGE_TOKEN not in line for line in corpus)
    for rec in load(dataset, "captions_val.json") + load(dataset, "instruct_val.json"):
        for turn in rec["conversations"]:
            for line in turn["value"].split("\n"):
                assert line == IMAGE_TOKEN or line in corpus, line
    for q in held_out(dataset):
        assert q["answer"] in corpus


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_specials_and_round_trip(tokenizer_dir: pathlib.Path, dataset: pathlib.Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok.pad_token == PAD_TOKEN and tok.eos_token == IM_END and tok.bos_token is None
    assert tok.padding_side == "right" and tok.model_max_length == 2048
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert len(tok) <= 1024
    text = f"{IM_START}user\n{IMAGE_TOKEN}\nWhat color is the circle?{IM_END}\n{IM_START}assistant\nred{IM_END}\n"
    ids = tok.encode(text)
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 2
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 2
    assert tok.decode(ids) == text
    for special in SPECIAL_TOKENS:
        assert len(tok.encode(special)) == 1
    lines = (dataset / "corpus.txt").read_text(encoding="utf-8").splitlines()
    for line, line_ids in zip(lines, tok(lines)["input_ids"]):
        assert tok.decode(line_ids) == line
    assert tok.decode(tok.encode("Ünïcode 🙂 text")) == "Ünïcode 🙂 text"  # bytes outside the corpus
    batch = tok(["red", "The triangle is red."], padding=True)
    assert batch["input_ids"][0][-1] == tok.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_chat_template(tokenizer_dir: pathlib.Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [
        {"role": "user", "content": f"{IMAGE_TOKEN}\nWhat shape is the red object?"},
        {"role": "assistant", "content": "circle"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        f"{IM_START}user\n{IMAGE_TOKEN}\nWhat shape is the red object?{IM_END}\n{IM_START}assistant\ncircle{IM_END}\n"
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{IM_START}user\n{IMAGE_TOKEN}\nWhat shape is the red object?{IM_END}\n{IM_START}assistant\n"
    system = tok.apply_chat_template([{"role": "system", "content": "Be brief."}], tokenize=False)
    assert system == f"{IM_START}system\nBe brief.{IM_END}\n"


def test_tokenizer_deterministic_and_idempotent(
    tokenizer_dir: pathlib.Path, dataset: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    before = {n: p.stat().st_mtime_ns for n, p in files(tokenizer_dir).items()}
    assert build_demo_tokenizer(tokenizer_dir, dataset / "corpus.txt", vocab_size=1024) == tokenizer_dir
    assert {n: p.stat().st_mtime_ns for n, p in files(tokenizer_dir).items()} == before

    other = build_demo_tokenizer(tmp_path / "tok2", dataset / "corpus.txt", vocab_size=1024)
    assert (other / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()

    # A different vocab size is a different tokenizer and must be rebuilt in place.
    build_demo_tokenizer(other, dataset / "corpus.txt", vocab_size=300)
    assert json.loads((other / "llava_pl_tokenizer.json").read_text())["vocab_size"] == 300
    assert len(json.loads((other / "tokenizer.json").read_text())["model"]["vocab"]) <= 300
