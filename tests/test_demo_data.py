"""Tests for the generator of the demo's synthetic shapes data set: layout, determinism, options, images."""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter

import pytest
from PIL import Image

from llava_pl.demo.dataset import INSTRUCT_MIX, generate_shapes_dataset
from llava_pl.demo.questions import IMAGE_TOKEN, SHORT_ANSWER_SUFFIX
from llava_pl.demo.scenes import (
    COLORS,
    KINDS,
    OUTLINE_RGB,
    POSITIONS,
    Scene,
    Shape,
    position_name,
    render_scene,
    side_length,
)
from tests.demo_data_helpers import SMALL, files, held_out, load, meta_by_image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), **SMALL)


def test_layout(dataset: pathlib.Path) -> None:
    names = set(files(dataset))
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
    a, b = files(dataset), files(other)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name


def test_seed_changes_data(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    other = generate_shapes_dataset(tmp_path / "seed", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert (other / "meta_train.json").read_bytes() != (dataset / "meta_train.json").read_bytes()


def test_idempotent_and_regenerates(tmp_path: pathlib.Path) -> None:
    params = {**SMALL, "n_train": 12, "n_val": 3, "n_test": 4}
    out = generate_shapes_dataset(tmp_path / "d", **params)
    before = {n: p.stat().st_mtime_ns for n, p in files(out).items()}
    assert generate_shapes_dataset(tmp_path / "d", **params) == out
    assert {n: p.stat().st_mtime_ns for n, p in files(out).items()} == before

    # Different parameters: everything is rewritten and stale images are removed.
    generate_shapes_dataset(tmp_path / "d", **{**params, "n_train": 5})
    assert len(list((out / "images" / "train").glob("*.png"))) == 5
    assert len(load(out, "meta_train.json")) == 5

    # A run interrupted before the manifest was written is redone on the next call.
    (out / "manifest.json").unlink()
    (out / "meta_val.json").write_text("garbage")
    generate_shapes_dataset(tmp_path / "d", **{**params, "n_train": 5})
    assert len(load(out, "meta_val.json")) == 3


def test_instruct_mix_sets_the_share_of_each_record_kind(tmp_path: pathlib.Path) -> None:
    mix = {"conversation": 1.0, "detail": 1.0, "reasoning": 0.0}
    out = generate_shapes_dataset(tmp_path / "mix", **SMALL, instruct_mix=mix)
    kinds = Counter(rec["type"] for rec in load(out, "instruct_train.json"))
    assert kinds == {"conversation": SMALL["n_train"], "detail": SMALL["n_train"]}
    # The mix is part of the data set's identity: another mix regenerates it.
    generate_shapes_dataset(tmp_path / "mix", **SMALL)
    assert set(Counter(rec["type"] for rec in load(out, "instruct_train.json"))) == set(INSTRUCT_MIX)
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
    records = load(out, "instruct_train.json")
    per_image = Counter(rec["image"] for rec in records)
    assert set(per_image.values()) == {2, 3}  # 2.5 per image: two or three
    assert 2.3 < len(records) / params["n_train"] < 2.7
    meta = meta_by_image(out)
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
    assert {len(rec["conversations"]) for rec in load(counting, "instruct_train.json")} == {2}
    for bad in ({"conversation_turns": [0, 2]}, {"conversation_turns": [3, 2]}, {"image_after_share": 1.5},
                {"question_mix": {"color": 1.0}}, {"instruct_mix": {**INSTRUCT_MIX, "detail": -1.0}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, **bad)


def test_shape_count_weights_skew_training_images_only(dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    params = {**SMALL, "n_train": 300}
    skewed = generate_shapes_dataset(tmp_path / "skewed", **params, shape_count_weights=[0, 1, 3])
    counts = Counter(len(m["shapes"]) for m in load(skewed, "meta_train.json"))
    assert counts[1] == 0 and counts[3] > 2 * counts[2] > 0, counts
    assert {len(m["shapes"]) for m in load(skewed, "meta_val.json")} <= {2, 3}
    # the held-out test split keeps one, two and three shapes equally likely: the same images as unweighted
    plain = generate_shapes_dataset(tmp_path / "plain", **params)
    assert (skewed / "meta_test.json").read_bytes() == (plain / "meta_test.json").read_bytes()
    assert Counter(len(m["shapes"]) for m in load(plain, "meta_train.json"))[1] > 60
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
        records = load(out, f"instruct_{split}.json")
        asked = Counter((r["image"], r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in records)
        expected = Counter()
        for meta in load(out, f"meta_{split}.json"):
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
    assert load(plain, "instruct_train.json") == []
    for bad in (["colour"], ["color", "color"], ["exists"]):
        with pytest.raises(ValueError, match="every_shape_questions"):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, every_shape_questions=bad)


def test_every_shape_questions_ask_position_per_shape_and_count_per_image(tmp_path: pathlib.Path) -> None:
    no_mix = {"conversation": 0.0, "detail": 0.0, "reasoning": 0.0}
    out = generate_shapes_dataset(tmp_path / "every", **SMALL, instruct_mix=no_mix,
                                  every_shape_questions=["position", "count"])
    records = load(out, "instruct_train.json")
    asked = Counter((r["image"], r["conversations"][0]["value"], r["conversations"][1]["value"]) for r in records)
    expected = Counter()
    for meta in load(out, "meta_train.json"):
        n = len(meta["shapes"])
        expected[(meta["image"], f"<image>\nHow many shapes are in the image?{SHORT_ANSWER_SUFFIX}",
                  ("zero", "one", "two", "three")[n])] += 1
        for s in meta["shapes"]:
            expected[(meta["image"], f"<image>\nWhere is the {s['color']} {s['kind']}?{SHORT_ANSWER_SUFFIX}",
                      s["position"])] += 1
    assert asked == expected


def test_train_and_test_images_differ(dataset: pathlib.Path) -> None:
    def contents(split: str) -> set[bytes]:
        return {p.read_bytes() for p in (dataset / "images" / split).glob("*.png")}

    train, val, test = contents("train"), contents("val"), contents("test")
    assert len(train) == 40 and len(test) == 60
    assert not train & test and not train & val and not val & test


def test_meta_is_consistent_with_images(dataset: pathlib.Path) -> None:
    size = SMALL["image_size"]
    for split in ("train", "test"):
        for rec in load(dataset, f"meta_{split}.json"):
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
        records += load(dataset, f"captions_{split}.json") + load(dataset, f"instruct_{split}.json")
    for split in ("train", "val", "test"):
        records += load(dataset, f"meta_{split}.json")
    records += held_out(dataset)
    assert records
    for rec in records:
        assert not rec["image"].startswith("/")
        assert (dataset / "images" / rec["image"]).is_file(), rec["image"]


def test_image_questions_ask_a_share_of_the_images_and_leave_the_rest_as_it_was(
        dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    no_mix = {"conversation": 0.0, "detail": 0.0, "reasoning": 0.0}
    plain = generate_shapes_dataset(tmp_path / "plain", **SMALL, instruct_mix=no_mix, every_shape_questions=["color"])
    out = generate_shapes_dataset(tmp_path / "some", **SMALL, instruct_mix=no_mix, every_shape_questions=["color"],
                                  image_questions={"count": 0.5, "position": 1.0})
    metas = {m["image"]: m["shapes"] for m in load(out, "meta_train.json")}
    records = load(out, "instruct_train.json")
    extra = [r for r in records if "What color" not in r["conversations"][0]["value"]]
    assert [r for r in records if r not in extra] == load(plain, "instruct_train.json")
    counts = [r for r in extra if "How many" in r["conversations"][0]["value"]]
    positions = [r for r in extra if "Where is" in r["conversations"][0]["value"]]
    assert len(counts) + len(positions) == len(extra) and len(positions) == len(metas)
    assert 0.3 * len(metas) < len(counts) < 0.7 * len(metas)
    for r in counts:
        assert r["conversations"][1]["value"] == ("zero", "one", "two", "three")[len(metas[r["image"]])]
    for r in positions:
        named = r["conversations"][0]["value"].split("Where is the ")[1].split("?")[0]
        assert r["conversations"][1]["value"] == next(s["position"] for s in metas[r["image"]]
                                                        if f"{s['color']} {s['kind']}" == named)
    # the images and held-out questions are the default data set's; a bad type or share is refused
    assert (out / "questions_test.jsonl").read_bytes() == (dataset / "questions_test.jsonl").read_bytes()
    for bad in ({"exists": 0.5}, {"count": 1.5}):
        with pytest.raises(ValueError, match="image_questions"):
            generate_shapes_dataset(tmp_path / "bad", **SMALL, image_questions=bad)
