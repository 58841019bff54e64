"""Tests for the synthetic shapes data set and the demo tokenizer builders."""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest
from PIL import Image

from data.shapes import (
    COLORS,
    IMAGE_TOKEN,
    INSTRUCT_MIX,
    KINDS,
    NUMBER_WORDS,
    OUTLINE_RGB,
    POSITIONS,
    SHORT_ANSWER_SUFFIX,
    Scene,
    Shape,
    side_length,
    generate_shapes_dataset,
    position_name,
    render_scene,
)
from data.tokenizer import IM_END, IM_START, PAD_TOKEN, SPECIAL_TOKENS, build_demo_tokenizer

SMALL = {"seed": 3, "n_train": 40, "n_val": 10, "n_test": 60, "image_size": 48}


def _files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: pathlib.Path, name: str) -> list[dict]:
    return json.loads((root / name).read_text(encoding="utf-8"))


def _questions(root: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (root / "questions_test.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SMALL)


@pytest.fixture(scope="module")
def tokenizer_dir(dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_demo_tokenizer(tmp_path_factory.mktemp("tok"), dataset / "corpus.txt", vocab_size=1024)


def _meta_by_image(root: pathlib.Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for split in ("train", "val", "test"):
        for rec in _load(root, f"meta_{split}.json"):
            out[rec["image"]] = rec["shapes"]
    return out


def _expected_short_answer(question: str, shapes: list[dict]) -> str:
    """Recompute the answer of a short question from the metadata alone."""
    by_kind = {s["kind"]: s for s in shapes}
    by_color = {s["color"]: s for s in shapes}
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return by_kind[m[1]]["color"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return by_color[m[1]]["kind"]
    if question == "How many shapes are in the image?":
        return NUMBER_WORDS[len(shapes)]
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        s = by_color[m[1]]
        assert s["kind"] == m[2], question
        return s["position"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any(s["color"] == m[1] and s["kind"] == m[2] for s in shapes) else "no"
    raise AssertionError(f"unexpected question {question!r}")


# ----------------------------------------------------------------------------- data set


def test_layout(dataset: pathlib.Path) -> None:
    names = set(_files(dataset))
    for name in ["manifest.json", "corpus.txt", "questions_test.jsonl"] + [
        f"{kind}_{split}.json" for kind in ("captions", "instruct") for split in ("train", "val")
    ] + [f"meta_{split}.json" for split in ("train", "val", "test")]:
        assert name in names, name
    for split, n in (("train", 40), ("val", 10), ("test", 60)):
        pngs = sorted(p for p in names if p.startswith(f"images/{split}/"))
        assert pngs == [f"images/{split}/{split}_{i:05d}.png" for i in range(n)]
    assert not any(n.endswith(".tmp") for n in names)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert {k: manifest[k] for k in SMALL} == SMALL
    assert isinstance(manifest["format_version"], int)


def test_deterministic(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    other = generate_shapes_dataset(tmp_path / "again", **SMALL)
    a, b = _files(dataset), _files(other)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name


def test_seed_changes_data(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    other = generate_shapes_dataset(tmp_path / "seed", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert (other / "meta_train.json").read_bytes() != (dataset / "meta_train.json").read_bytes()


def test_idempotent_and_regenerates(tmp_path: pathlib.Path) -> None:
    params = {**SMALL, "n_train": 12, "n_val": 3, "n_test": 4}
    out = generate_shapes_dataset(tmp_path / "d", **params)
    before = {n: p.stat().st_mtime_ns for n, p in _files(out).items()}
    assert generate_shapes_dataset(tmp_path / "d", **params) == out
    assert {n: p.stat().st_mtime_ns for n, p in _files(out).items()} == before

    # Different parameters: everything is rewritten and stale images are removed.
    generate_shapes_dataset(tmp_path / "d", **{**params, "n_train": 5})
    assert len(list((out / "images" / "train").glob("*.png"))) == 5
    assert len(_load(out, "meta_train.json")) == 5

    # A run interrupted before the manifest was written is redone on the next call.
    (out / "manifest.json").unlink()
    (out / "meta_val.json").write_text("garbage")
    generate_shapes_dataset(tmp_path / "d", **{**params, "n_train": 5})
    assert len(_load(out, "meta_val.json")) == 3


def test_instruct_mix_sets_the_share_of_each_record_kind(tmp_path: pathlib.Path) -> None:
    mix = {"conversation": 1.0, "detail": 1.0, "reasoning": 0.0}
    out = generate_shapes_dataset(tmp_path / "mix", **SMALL, instruct_mix=mix)
    kinds = Counter(rec["type"] for rec in _load(out, "instruct_train.json"))
    assert kinds == {"conversation": SMALL["n_train"], "detail": SMALL["n_train"]}
    # The mix is part of the data set's identity: another mix regenerates it.
    generate_shapes_dataset(tmp_path / "mix", **SMALL)
    assert set(Counter(rec["type"] for rec in _load(out, "instruct_train.json"))) == set(INSTRUCT_MIX)
    with pytest.raises(ValueError, match="instruct_mix"):
        generate_shapes_dataset(tmp_path / "bad", **SMALL, instruct_mix={"detail": 1.0})


def test_conversation_options(tmp_path: pathlib.Path) -> None:
    options = {
        "instruct_mix": {"conversation": 2.5, "detail": 0.0, "reasoning": 0.0},
        "conversation_turns": [1, 2],
        "question_mix": {"color": 1.0, "shape": 1.0, "position": 0.0, "count": 0.0, "exists": 0.0},
        "image_after_share": 0.0,
    }
    params = {**SMALL, "n_train": 200}
    out = generate_shapes_dataset(tmp_path / "opts", **params, **options)
    records = _load(out, "instruct_train.json")
    per_image = Counter(rec["image"] for rec in records)
    assert set(per_image.values()) == {2, 3}  # 2.5 per image: two or three
    assert 2.3 < len(records) / params["n_train"] < 2.7
    meta = _meta_by_image(out)
    turn_counts = Counter()
    for rec in records:
        conv = rec["conversations"]
        assert rec["type"] == "conversation" and conv[0]["value"].startswith(IMAGE_TOKEN + "\n")
        questions = [t["value"].replace(IMAGE_TOKEN + "\n", "").replace(SHORT_ANSWER_SUFFIX, "") for t in conv[::2]]
        turn_counts[len(questions)] += 1
        assert all(q.startswith(("What color is the", "What shape is the")) for q in questions)
        if len(meta[rec["image"]]) > 1:  # no turn is about a shape an earlier turn asked about
            named = [re.search(r"the (\w+)", q)[1] for q in questions]
            by_word = {w: i for i, s in enumerate(meta[rec["image"]]) for w in (s["color"], s["kind"])}
            assert len({by_word[w] for w in named}) == len(named), questions
    assert set(turn_counts) == {1, 2}
    # a mix with fewer distinct questions than turns ends the conversation instead of drawing forever
    counting = generate_shapes_dataset(tmp_path / "count", **params, **{
        **options, "conversation_turns": [2, 3],
        "question_mix": {"color": 0.0, "shape": 0.0, "position": 0.0, "count": 1.0, "exists": 0.0}})
    assert {len(rec["conversations"]) for rec in _load(counting, "instruct_train.json")} == {2}
    for bad in ({"conversation_turns": [0, 2]}, {"conversation_turns": [3, 2]}, {"image_after_share": 1.5},
                {"question_mix": {"color": 1.0}}, {"instruct_mix": {**INSTRUCT_MIX, "detail": -1.0}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, **bad)


def test_shape_count_weights_skew_training_images_only(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    params = {**SMALL, "n_train": 300}
    skewed = generate_shapes_dataset(tmp_path / "skewed", **params, shape_count_weights=[0, 1, 3])
    counts = Counter(len(m["shapes"]) for m in _load(skewed, "meta_train.json"))
    assert counts[1] == 0 and counts[3] > 2 * counts[2] > 0, counts
    assert {len(m["shapes"]) for m in _load(skewed, "meta_val.json")} <= {2, 3}
    # the held-out test split keeps one, two and three shapes equally likely: the same images as unweighted
    plain = generate_shapes_dataset(tmp_path / "plain", **params)
    assert (skewed / "meta_test.json").read_bytes() == (plain / "meta_test.json").read_bytes()
    assert Counter(len(m["shapes"]) for m in _load(plain, "meta_train.json"))[1] > 60
    # equal weights are the default draw, byte for byte
    equal = generate_shapes_dataset(tmp_path / "equal", **SMALL, shape_count_weights=[2, 2, 2])
    assert (equal / "meta_train.json").read_bytes() == (dataset / "meta_train.json").read_bytes()
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="shape_count_weights"):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, shape_count_weights=bad)


def test_every_shape_questions_ask_each_shape_once_per_type(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    no_mix = {"conversation": 0.0, "detail": 0.0, "reasoning": 0.0}
    out = generate_shapes_dataset(tmp_path / "every", **SMALL, instruct_mix=no_mix,
                                  every_shape_questions=["color", "shape"])
    for split in ("train", "val"):
        records = _load(out, f"instruct_{split}.json")
        asked = Counter((r["image"], r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in records)
        expected = Counter()
        for meta in _load(out, f"meta_{split}.json"):
            for s in meta["shapes"]:
                color_question = f"<image>\nWhat color is the {s['kind']}?{SHORT_ANSWER_SUFFIX}"
                shape_question = f"<image>\nWhat shape is the {s['color']} object?{SHORT_ANSWER_SUFFIX}"
                expected[(meta["image"], color_question, s["color"])] += 1
                expected[(meta["image"], shape_question, s["kind"])] += 1
        assert asked == expected
        assert all(len(r["conversations"]) == 2 and r["type"] == "conversation" for r in records)
    # the images and the held-out questions are those of the default data set; none of it without the option
    assert (out / "meta_train.json").read_bytes() == (dataset / "meta_train.json").read_bytes()
    assert (out / "questions_test.jsonl").read_bytes() == (dataset / "questions_test.jsonl").read_bytes()
    plain = generate_shapes_dataset(tmp_path / "plain", **SMALL, instruct_mix=no_mix)
    assert _load(plain, "instruct_train.json") == []
    for bad in (["colour"], ["color", "color"], ["count"]):
        with pytest.raises(ValueError, match="every_shape_questions"):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, every_shape_questions=bad)


def test_train_and_test_images_differ(dataset: pathlib.Path) -> None:
    def contents(split: str) -> set[bytes]:
        return {p.read_bytes() for p in (dataset / "images" / split).glob("*.png")}

    train, val, test = contents("train"), contents("val"), contents("test")
    assert len(train) == 40 and len(test) == 60
    assert not train & test and not train & val and not val & test


def test_meta_is_consistent_with_images(dataset: pathlib.Path) -> None:
    size = SMALL["image_size"]
    for split in ("train", "test"):
        for rec in _load(dataset, f"meta_{split}.json"):
            shapes = rec["shapes"]
            assert 1 <= len(shapes) <= 3
            assert len({s["kind"] for s in shapes}) == len(shapes)
            assert len({s["color"] for s in shapes}) == len(shapes)
            img = Image.open(dataset / "images" / rec["image"])
            assert img.mode == "RGB" and img.size == (size, size)
            assert min(img.getpixel((0, 0))) >= 220  # light background (corners are never covered)
            for i, s in enumerate(shapes):
                assert s["kind"] in KINDS and s["color"] in COLORS and s["position"] in POSITIONS
                x1, y1, x2, y2 = s["bbox"]
                assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
                assert x2 - x1 == y2 - y1 == side_length(s["size"], size)
                assert position_name((x1 + x2) / 2, (y1 + y2) / 2, size) == s["position"]
                for t in shapes[i + 1 :]:
                    u1, v1, u2, v2 = t["bbox"]
                    assert x2 <= u1 or u2 <= x1 or y2 <= v1 or v2 <= y1, "shapes overlap"
                # The pixel at the bbox centre lies inside every kind of shape and must show its colour.
                pixel = img.getpixel((int((x1 + x2) / 2), int((y1 + y2) / 2)))
                nearest = min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], pixel)))
                assert nearest == s["color"], (rec["image"], s, pixel)


@pytest.mark.parametrize("kind", KINDS)
def test_outline_draws_a_dark_rim_whatever_the_colour(kind: str) -> None:
    side = side_length("large", 96)
    x1 = 32 + (32 - side) // 2
    bbox = (x1, x1, x1 + side, x1 + side)
    for color in ("yellow", "blue"):
        scene = Scene((240, 240, 240), (Shape(kind, color, "large", "center", bbox),))
        plain, rimmed = (render_scene(scene, 96, outline) for outline in (0, 2))
        centre = (x1 + side // 2, x1 + side // 2)
        assert plain.getpixel(centre) == rimmed.getpixel(centre) == COLORS[color]
        changed = [(x, y) for x in range(96) for y in range(96) if plain.getpixel((x, y)) != rimmed.getpixel((x, y))]
        assert changed and all(x1 <= x < x1 + side and x1 <= y < x1 + side for x, y in changed)  # inside the box
        # every kind reaches the top of its box at the middle: there the rim is, dark whatever the fill
        rim = rimmed.getpixel((x1 + side // 2, x1 + 1))
        assert max(abs(a - b) for a, b in zip(rim, OUTLINE_RGB)) <= 40, (color, rim)


def test_every_image_reference_exists(dataset: pathlib.Path) -> None:
    records: list[dict] = []
    for split in ("train", "val"):
        records += _load(dataset, f"captions_{split}.json") + _load(dataset, f"instruct_{split}.json")
    for split in ("train", "val", "test"):
        records += _load(dataset, f"meta_{split}.json")
    records += _questions(dataset)
    assert records
    for rec in records:
        assert not rec["image"].startswith("/")
        assert (dataset / "images" / rec["image"]).is_file(), rec["image"]


def test_conversation_structure(dataset: pathlib.Path) -> None:
    for split in ("train", "val"):
        captions = _load(dataset, f"captions_{split}.json")
        instruct = _load(dataset, f"instruct_{split}.json")
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
    meta = _meta_by_image(dataset)
    n_short = n_full = 0
    for rec in _load(dataset, "instruct_train.json") + _load(dataset, "instruct_val.json"):
        if rec["type"] != "conversation":
            continue
        shapes = meta[rec["image"]]
        conv = rec["conversations"]
        for human, gpt in zip(conv[0::2], conv[1::2]):
            question = human["value"].replace(IMAGE_TOKEN, "").strip()
            expected = None
            if question.endswith(SHORT_ANSWER_SUFFIX):
                expected = _expected_short_answer(question[: -len(SHORT_ANSWER_SUFFIX)].strip(), shapes)
                assert gpt["value"] == expected, (rec["image"], question)
                n_short += 1
            else:
                expected = _expected_short_answer(question, shapes)
                answer = gpt["value"]
                assert answer[0].isupper() and answer.endswith("."), answer
                if expected in ("yes", "no"):
                    assert answer.lower().startswith(expected), (question, answer)
                else:
                    assert re.search(rf"\b{expected}\b", answer), (question, answer)
                n_full += 1
    assert n_short > 10 and n_full > 10


def test_text_only_mentions_present_shapes(dataset: pathlib.Path) -> None:
    meta = _meta_by_image(dataset)
    for rec in _load(dataset, "captions_train.json") + _load(dataset, "instruct_train.json"):
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
    meta = _meta_by_image(dataset)
    questions = _questions(dataset)
    assert len({q["question_id"] for q in questions}) == len(questions)
    per_image = defaultdict(Counter)
    for q in questions:
        assert q["image"].startswith("test/")
        assert IMAGE_TOKEN not in q["text"]
        assert q["text"].endswith(SHORT_ANSWER_SUFFIX)
        question = q["text"][: -len(SHORT_ANSWER_SUFFIX)]
        assert q["answer"] == _expected_short_answer(question, meta[q["image"]]), q
        assert q["shapes"] == len(meta[q["image"]]), q
        per_image[q["image"]][q["type"]] += 1
    assert len(per_image) == SMALL["n_test"]
    for counts in per_image.values():
        assert counts["count"] == 1
        assert all(1 <= counts[t] <= 2 for t in ("color", "shape", "position"))


def test_test_answers_are_not_guessable(dataset: pathlib.Path) -> None:
    questions = _questions(dataset)
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
        for rec in _load(dataset, "instruct_train.json")
        for t in rec["conversations"][0::2]
    }
    names = re.compile(r"\b(" + "|".join(list(COLORS) + list(KINDS)) + r")\b")

    def templates(texts: Iterable[str]) -> set[str]:
        return {names.sub("X", t) for t in texts}

    test_templates = templates(q["text"] for q in _questions(dataset))
    assert test_templates <= templates(train_questions)


def test_corpus_covers_texts(dataset: pathlib.Path) -> None:
    corpus = set((dataset / "corpus.txt").read_text(encoding="utf-8").splitlines())
    assert all(line and IMAGE_TOKEN not in line for line in corpus)
    for rec in _load(dataset, "captions_val.json") + _load(dataset, "instruct_val.json"):
        for turn in rec["conversations"]:
            for line in turn["value"].split("\n"):
                assert line == IMAGE_TOKEN or line in corpus, line
    for q in _questions(dataset):
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
    before = {n: p.stat().st_mtime_ns for n, p in _files(tokenizer_dir).items()}
    assert build_demo_tokenizer(tokenizer_dir, dataset / "corpus.txt", vocab_size=1024) == tokenizer_dir
    assert {n: p.stat().st_mtime_ns for n, p in _files(tokenizer_dir).items()} == before

    other = build_demo_tokenizer(tmp_path / "tok2", dataset / "corpus.txt", vocab_size=1024)
    assert (other / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()

    # A different vocab size is a different tokenizer and must be rebuilt in place.
    build_demo_tokenizer(other, dataset / "corpus.txt", vocab_size=300)
    assert json.loads((other / "llava_pl_tokenizer.json").read_text())["vocab_size"] == 300
    assert len(json.loads((other / "tokenizer.json").read_text())["model"]["vocab"]) <= 300
