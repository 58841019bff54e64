"""The small shapes data set that tests/test_demo_data.py and tests/test_demo_texts.py read, and what they read it
with."""

from __future__ import annotations

import json
import pathlib
import re

from llava_pl.demo.questions import NUMBER_WORDS

SMALL = {"seed": 3, "n_train": 40, "n_val": 10, "n_test": 60, "image_size": 48}


def files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every file under root by its relative path."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def load(root: pathlib.Path, name: str) -> list[dict]:
    """A JSON file of the data set."""
    return json.loads((root / name).read_text(encoding="utf-8"))


def held_out(root: pathlib.Path) -> list[dict]:
    """The test split's questions."""
    return [json.loads(line) for line in (root / "questions_test.jsonl").read_text(encoding="utf-8").splitlines()]


def meta_by_image(root: pathlib.Path) -> dict[str, list[dict]]:
    """The shapes of every image of every split, by image path."""
    out: dict[str, list[dict]] = {}
    for split in ("train", "val", "test"):
        for rec in load(root, f"meta_{split}.json"):
            out[rec["image"]] = rec["shapes"]
    return out


def expected_short_answer(question: str, shapes: list[dict]) -> str:
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
