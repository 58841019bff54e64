"""Instruction data, its input: the symbolic context (captions and boxes) of LLaVA's caps_boxes records, COCO
annotation files turned into those records, and the prompt files the chat LLM is asked with."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from llava_pl.data.instruct.context import ContextError, ImageContext, read_contexts, symbolic_context
from llava_pl.data.instruct.parse import parse_reply
from llava_pl.data.instruct.prompts import KindPrompt, load_prompts
from tests.conftest import CONF_DIR, formats_file
from tests.instruct_helpers import EXCERPT, KINDS, compose_make_instruct, excerpt_contexts, kind_prompts


@pytest.fixture(scope="module")
def prompts() -> dict[str, KindPrompt]:
    return kind_prompts()


@pytest.fixture(scope="module")
def contexts() -> list[ImageContext]:
    return excerpt_contexts()


def test_the_context_of_a_real_record_lists_its_captions_and_boxes(contexts) -> None:
    cat = contexts[0]  # 000000506095: a cat at a laptop, 5 captions, 11 instances
    assert (cat.id, cat.image, len(cat.captions), len(cat.instances)) == ("000000506095", "000000506095.jpg", 5, 11)
    text = symbolic_context(cat, use_boxes=True)
    lines = text.splitlines()
    assert lines[:6] == ["Captions:", *cat.captions] and lines[6] == "Objects:"
    assert lines[7] == "cat: [0.66, 0.21, 1.00, 0.75]"  # bbox [0.658, 0.207, 1.0, 0.754] at 2 decimals
    assert len(lines) == 7 + 11 and sum(line.startswith("book: ") for line in lines) == 9
    assert "Objects:" not in symbolic_context(cat, use_boxes=False)
    assert symbolic_context(cat, True, decimals=3).splitlines()[7] == "cat: [0.658, 0.207, 1.000, 0.754]"


@pytest.mark.parametrize("record, problem", [
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [10, 20, 300, 400]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): bbox \[10, 20, 300, 400\] is not normalised"),
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [0.5, 0.1, 0.2, 0.3]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): bbox .* x1 <= x2"),
    ({"id": "b", "image": "b.jpg", "captions": ["x"], "instances": [{"category": "dog", "bbox": [0.1, 0.2]}]},
     r"x.jsonl:2 \(id b\): instances\[0\] \(dog\): 'bbox' must be 4 numbers"),
    ({"id": "b", "captions": ["x"]}, r"x.jsonl:2 \(id b\): missing 'image'"),
    ({"image": "b.jpg", "captions": ["x"]}, r"x.jsonl:2: missing 'id'"),
    ({"id": "b", "image": "b.jpg", "captions": [], "instances": []},
     r"x.jsonl:2 \(id b\): no captions and no instances"),
    ({"id": "a", "image": "b.jpg", "captions": ["x"]}, r"x.jsonl:2: id a already used at .*x.jsonl:1"),
])
def test_a_bad_input_record_is_refused_naming_file_line_id_and_problem(tmp_path, record, problem) -> None:
    path = tmp_path / "x.jsonl"
    good = {"id": "a", "image": "a.jpg", "captions": ["A dog."], "instances": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ContextError, match=problem):
        read_contexts(path)


def test_coco_annotation_files_become_the_context_records_llava_uses(tmp_path) -> None:
    from llava_pl.data.instruct.coco import coco_contexts

    excerpt = [json.loads(line) for line in formats_file(EXCERPT).read_text().splitlines()]
    # COCO files holding the excerpt's images: pixel [x, y, w, h] boxes on a 640 x 480 image, numeric ids
    width, height = 640, 480
    images = [{"id": int(r["id"]), "file_name": r["image"], "width": width, "height": height} for r in excerpt]
    images.append({"id": 7, "file_name": "000000000007.jpg", "width": width, "height": height})  # no captions
    captions = [{"id": n, "image_id": int(r["id"]), "caption": c} for n, (r, c) in
                enumerate((r, c) for r in excerpt for c in r["captions"])]
    categories = sorted({i["category"] for r in excerpt for i in r["instances"]})
    boxes = [{"id": n, "image_id": int(r["id"]), "category_id": categories.index(i["category"]) + 1,
              "bbox": [i["bbox"][0] * width, i["bbox"][1] * height, (i["bbox"][2] - i["bbox"][0]) * width,
                       (i["bbox"][3] - i["bbox"][1]) * height]}
             for n, (r, i) in enumerate((r, i) for r in excerpt for i in r["instances"])]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": images, "annotations": boxes,
        "categories": [{"id": n + 1, "name": name} for n, name in enumerate(categories)]}))
    records = coco_contexts(tmp_path / "captions.json", tmp_path / "instances.json")
    assert records == excerpt  # LLaVA's own caps_boxes records, rebuilt from COCO-style files


def test_every_prompt_file_loads_and_its_examples_follow_its_own_format(prompts, contexts) -> None:
    import dataclasses

    files = sorted(path.stem for path in (CONF_DIR / "instruct_prompts").glob("*.yaml"))
    cfg = compose_make_instruct("in=x", "out=y", *(f"+instruct_prompts@prompts.file_{name}={name}" for name in files))
    loaded = load_prompts(OmegaConf.to_container(cfg.prompts, resolve=True), [f"file_{name}" for name in files])
    assert files == sorted(KINDS) and all(prompt.examples for prompt in loaded.values())
    for name, prompt in loaded.items():
        for example in prompt.examples:  # few-shot examples laid out as the real contexts are, replies valid
            lines = example.context.splitlines()
            assert lines[0] == cfg.context.captions_header
            assert (cfg.context.objects_header in lines) == prompt.use_boxes, name
            parse_reply(example.reply, dataclasses.replace(prompt, examples=()), contexts[0])
