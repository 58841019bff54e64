"""A tiny copy of every benchmark in the layout of LLaVA's ``playground/data/eval`` (what ``paths.eval_data``
points at), in each benchmark's own file formats, with images drawn here: for end-to-end runs of the tasks."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

SHORT = "\nAnswer the question using a single word or phrase."


def draw(path: Path, colour: str, shape: str, size: tuple[int, int] = (40, 30)) -> None:
    """A shape on a white canvas; not square, so the ``pad`` aspect handling has something to do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, "white")
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    canvas = ImageDraw.Draw(image)
    (canvas.ellipse if shape == "circle" else canvas.rectangle)(box, fill=colour)
    image.save(path)


def _lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_benchmarks(root: Path) -> Path:
    # POPE: one question file over three splits, one label file per split, in the same order
    questions, offsets = [], {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
    for split, offset in offsets.items():
        labels = []
        for index, (thing, label) in enumerate([("circle", "yes"), ("dog", "no")], start=1):
            image = f"COCO_val2014_{offset + index:012d}.jpg"
            draw(root / "pope" / "val2014" / image, "red", "circle")
            questions.append({"question_id": offset + index, "image": image,
                              "text": f"Is there a {thing} in the image?" + SHORT, "category": split})
            labels.append({"question_id": index, "image": image, "text": f"Is there a {thing} in the image?",
                           "label": label})
        _lines(root / "pope" / "coco" / f"coco_pope_{split}.json", labels)
    _lines(root / "pope" / "llava_pope_test.jsonl", questions)

    # MME: two questions per image; ground truth per subtask in MME's tab-separated format
    mme_questions = []
    for subtask, image, pair in [("color", "0001.jpg", ("red", "blue")), ("code_reasoning", "0002.png", ("1", "2"))]:
        draw(root / "MME" / "MME_Benchmark_release_version" / subtask / image, "red", "square")
        truth = []
        for value, answer in zip(pair, ("Yes", "No")):
            question = f"Is the value {value}?"
            mme_questions.append({"question_id": f"{subtask}/{image}", "image": f"{subtask}/{image}",
                                  "text": question + SHORT, "category": subtask})
            truth.append(f"{image}\t{question} Please answer yes or no.\t{answer}\n")
        (root / "MME" / "eval_tool" / "Your_Results").mkdir(parents=True, exist_ok=True)
        (root / "MME" / "eval_tool" / "Your_Results" / f"{subtask}.txt").write_text("".join(truth))
    _lines(root / "MME" / "llava_mme.jsonl", mme_questions)

    # ScienceQA: two image problems and a text-only one in the test split, one training problem
    problems = {
        "1": {"question": "Which colour is the shape?", "choices": ["red", "blue"], "answer": 0, "hint": "",
              "image": "image.png", "lecture": "Colours.", "solution": "It is red.", "split": "test"},
        "2": {"question": "Which shape is shown?", "choices": ["circle", "square", "triangle"], "answer": 1,
              "hint": "Look closely.", "image": "image.png", "lecture": "", "solution": "", "split": "test"},
        "3": {"question": "Which is a number?", "choices": ["seven", "blue"], "answer": 0, "hint": "", "image": None,
              "lecture": "", "solution": "", "split": "test"},
        "4": {"question": "Which colour is the shape?", "choices": ["green", "red"], "answer": 1, "hint": "",
              "image": "image.png", "lecture": "", "solution": "", "split": "train"},
    }
    draw(root / "scienceqa" / "images" / "test" / "1" / "image.png", "red", "circle")
    draw(root / "scienceqa" / "images" / "test" / "2" / "image.png", "blue", "square")
    draw(root / "scienceqa" / "images" / "train" / "4" / "image.png", "red", "square")
    _json(root / "scienceqa" / "problems.json", problems)
    _json(root / "scienceqa" / "pid_splits.json", {"train": ["4"], "val": [], "test": ["1", "2", "3"]})

    # TextVQA: question_id is the image id; two questions share an image
    draw(root / "textvqa" / "train_images" / "abc.jpg", "black", "square")
    textvqa = [("abc", "What is written?", "STOP"), ("abc", "What colour is it?", "")]
    _lines(root / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": image_id, "image": f"{image_id}.jpg", "category": "default",
         "text": f"{question}\nReference OCR token: {ocr}" + SHORT} for image_id, question, ocr in textvqa])
    _json(root / "textvqa" / "TextVQA_0.5.1_val.json", {"data": [
        {"image_id": "abc", "question": "What is written?", "answers": ["stop"] * 10},
        {"image_id": "abc", "question": "What colour is it?", "answers": ["black"] * 10}]})

    # GQA
    draw(root / "gqa" / "data" / "images" / "n1.jpg", "green", "circle")
    _lines(root / "gqa" / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "201", "image": "n1.jpg", "text": "What colour is the ball?" + SHORT, "category": "default"}])
    _json(root / "gqa" / "data" / "testdev_balanced_questions.json", {"201": {"answer": "green"}})

    # VQAv2 test-dev: no answers; the upload covers test2015, a superset
    draw(root / "vqav2" / "test2015" / "COCO_test2015_000000000001.jpg", "blue", "circle")
    vqa = [{"question_id": 11, "image": "COCO_test2015_000000000001.jpg", "text": "How many balls?" + SHORT,
            "category": "default"}]
    _lines(root / "vqav2" / "llava_vqav2_mscoco_test-dev2015.jsonl", vqa)
    _lines(root / "vqav2" / "llava_vqav2_mscoco_test2015.jsonl", vqa + [{**vqa[0], "question_id": 12}])
    return root
