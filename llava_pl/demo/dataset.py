"""Seeded generator of the demo's synthetic "shapes" vision-language data set in the LLaVA file layout:
images, captions and instruction records for training and validation, short questions for the test split, the
text corpus the demo tokenizer is trained on, and a manifest that marks a complete data set.

    python -m llava_pl.demo.dataset --out data/generated/shapes
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
from collections.abc import Iterable, Sequence

from llava_pl.demo.descriptions import DETAIL_INSTRUCTIONS, caption_record, detail_description, reasoning_qa
from llava_pl.demo.questions import (
    EVERY_SHAPE_TYPES,
    IMAGE_AFTER_SHARE,
    IMAGE_TOKEN,
    QUESTION_MIX,
    QUESTION_TYPES,
    SHORT_ANSWER_SUFFIX,
    conversation,
    every_shape_records,
    held_out_questions,
    some_image_records,
    with_image,
)
from llava_pl.demo.scenes import COLORS, KINDS, POSITIONS, SIZES, Shape, render_scene, sample_scene

FORMAT_VERSION = 6
SPLITS: tuple[str, ...] = ("train", "val", "test")
TEXT_SPLITS: tuple[str, ...] = ("train", "val")
# Instruction records of each kind per training image: a share below 1 is the chance that an image gets one, a
# larger value the expected number (2.5: two or three). Short questions carry the most signal per token for a
# model that learns to see from scratch, so every image gets a conversation.
INSTRUCT_MIX: dict[str, float] = {"conversation": 1.0, "detail": 0.5, "reasoning": 0.25}
CONVERSATION_TURNS: tuple[int, int] = (3, 6)  # question-answer pairs per conversation, fewest and most


def _instruct_records(
    rng: random.Random,
    stem: str,
    rel: str,
    shapes: tuple[Shape, ...],
    mix: dict[str, float],
    turns_range: tuple[int, int],
    question_mix: dict[str, float],
    image_after_share: float,
) -> list[dict]:
    def single(q: str, a: str) -> list[dict]:
        return [{"from": "human", "value": with_image(rng, q, image_after_share)}, {"from": "gpt", "value": a}]

    makers = {
        "conversation": lambda: conversation(rng, shapes, turns_range, question_mix, image_after_share),
        "detail": lambda: single(rng.choice(DETAIL_INSTRUCTIONS), detail_description(shapes)),
        "reasoning": lambda: single(*reasoning_qa(rng, shapes)),
    }
    records = []
    for kind, make in makers.items():
        share = mix[kind]
        for _ in range(int(share) + (rng.random() < share % 1)):
            records.append({"id": stem, "type": kind, "image": rel, "conversations": make()})
    return records



def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: pathlib.Path, obj: object) -> None:
    _write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def _corpus_lines(texts: Iterable[str]) -> list[str]:
    lines: set[str] = set()
    for text in texts:
        for line in text.split("\n"):
            line = line.replace(IMAGE_TOKEN, "").strip()
            if line:
                lines.add(line)
    return sorted(lines)


def generate_shapes_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 200,
    n_test: int = 300,
    image_size: int = 48,
    instruct_mix: dict[str, float] | None = None,
    conversation_turns: tuple[int, int] | list[int] = CONVERSATION_TURNS,
    question_mix: dict[str, float] | None = None,
    image_after_share: float = IMAGE_AFTER_SHARE,
    outline: int = 0,
    shape_count_weights: Sequence[float] = (1.0, 1.0, 1.0),
    every_shape_questions: Sequence[str] = (),
    image_questions: dict[str, float] | None = None,
) -> pathlib.Path:
    """Generate (or reuse, if already generated with the same parameters) the shapes data set in out_dir.

    ``instruct_mix``: instruction records of each kind per training image (``INSTRUCT_MIX`` by default);
    ``conversation_turns``: the fewest and most question-answer pairs of a conversation (fewer where the mix runs
    out of questions not yet asked, ``questions.MAX_REPEATED_DRAWS``); ``question_mix``: how
    often a conversation turn asks each kind of question (``QUESTION_MIX`` by default); ``image_after_share``:
    of instruction records, the share with the image after the first instruction; ``outline``: the width in pixels
    of a dark rim drawn round every shape whatever its colour (0: none); ``shape_count_weights``: relative weights
    of training and validation images with one, two and three shapes (the test split keeps them equally likely);
    ``every_shape_questions``: question types (of ``EVERY_SHAPE_TYPES``) asked about every shape of every training
    and validation image (count: once per image), one short question per conversation, besides ``instruct_mix``;
    ``image_questions``: ``{type: share}``, each type (of ``EVERY_SHAPE_TYPES``) asked once, in a conversation of
    its own, of that share of the training and validation images (a per-shape type: about one of its shapes).
    """
    mix = dict(INSTRUCT_MIX if instruct_mix is None else instruct_mix)
    if set(mix) != set(INSTRUCT_MIX) or not all(share >= 0.0 for share in mix.values()):
        raise ValueError(f"instruct_mix needs a number ≥ 0 for each of {sorted(INSTRUCT_MIX)}, got {mix}")
    questions_mix = dict(QUESTION_MIX if question_mix is None else question_mix)
    if set(questions_mix) != set(QUESTION_MIX) or min(questions_mix.values()) < 0 or not any(questions_mix.values()):
        raise ValueError(f"question_mix needs a weight ≥ 0 for each of {sorted(QUESTION_MIX)}, got {questions_mix}")
    turns_range = tuple(conversation_turns)
    if len(turns_range) != 2 or not 1 <= turns_range[0] <= turns_range[1]:
        raise ValueError(f"conversation_turns must be [fewest, most], 1 ≤ fewest ≤ most, got {conversation_turns}")
    if not 0.0 <= image_after_share <= 1.0:
        raise ValueError(f"image_after_share must be in [0, 1], got {image_after_share}")
    count_weights = [float(w) for w in shape_count_weights]
    if len(count_weights) != 3 or min(count_weights) < 0 or not any(count_weights):
        raise ValueError(f"shape_count_weights needs three weights ≥ 0 (one, two, three shapes), "
                         f"got {shape_count_weights}")
    per_shape = list(every_shape_questions)
    if not set(per_shape) <= set(EVERY_SHAPE_TYPES) or len(set(per_shape)) != len(per_shape):
        raise ValueError(f"every_shape_questions takes distinct types among {sorted(EVERY_SHAPE_TYPES)}, "
                         f"got {every_shape_questions}")
    some_images = {str(k): float(v) for k, v in (image_questions or {}).items()}
    if not set(some_images) <= set(EVERY_SHAPE_TYPES) or not all(0.0 <= v <= 1.0 for v in some_images.values()):
        raise ValueError(f"image_questions takes {{type: share in [0, 1]}} for types among "
                         f"{sorted(EVERY_SHAPE_TYPES)}, got {image_questions}")
    if image_size < 24 or image_size % 3:
        raise ValueError(f"image_size must be a multiple of 3 and at least 24, got {image_size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(n < 0 for n in counts.values()):
        raise ValueError("split sizes must be non-negative")
    out = pathlib.Path(out_dir)
    params = {"format_version": FORMAT_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
              "n_test": n_test, "image_size": image_size, "instruct_mix": mix,
              "conversation_turns": list(turns_range), "question_mix": questions_mix,
              "image_after_share": image_after_share, "outline": outline,
              "shape_count_weights": count_weights, "every_shape_questions": per_shape,
              "image_questions": some_images}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and all(old.get(k) == v for k, v in params.items()):
            return out
        manifest_path.unlink()

    out.mkdir(parents=True, exist_ok=True)
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    texts: list[str] = []
    for split in SPLITS:
        scene_rng = random.Random(f"shapes/{seed}/{split}/scene")
        text_rng = random.Random(f"shapes/{seed}/{split}/text")
        # a generator of its own, so that text_rng's draws (and the records they make) stay as they were
        image_question_rng = random.Random(f"shapes/{seed}/{split}/image_questions")
        uniform = split not in TEXT_SPLITS or len(set(count_weights)) == 1  # equal weights: the default draw
        split_weights = None if uniform else count_weights
        img_dir = out / "images" / split
        img_dir.mkdir(parents=True)
        meta, captions, instruct, questions = [], [], [], []
        for index in range(counts[split]):
            stem = f"{split}_{index:05d}"
            rel = f"{split}/{stem}.png"
            scene = sample_scene(scene_rng, image_size, split_weights)
            render_scene(scene, image_size, outline).save(img_dir / f"{stem}.png", format="PNG", compress_level=6)
            meta.append({"image": rel, "shapes": [s.to_meta() for s in scene.shapes]})
            if split in TEXT_SPLITS:
                captions.append(caption_record(text_rng, stem, rel, scene.shapes))
                instruct.extend(every_shape_records(stem, rel, scene.shapes, per_shape))
                instruct.extend(some_image_records(image_question_rng, stem, rel, scene.shapes, some_images))
                instruct.extend(
                    _instruct_records(
                        text_rng, stem, rel, scene.shapes, mix, turns_range, questions_mix, image_after_share
                    )
                )
            else:
                questions.extend(held_out_questions(text_rng, stem, rel, scene.shapes))
        _write_json(out / f"meta_{split}.json", meta)
        if split in TEXT_SPLITS:
            _write_json(out / f"captions_{split}.json", captions)
            _write_json(out / f"instruct_{split}.json", instruct)
            texts += [t["value"] for rec in captions + instruct for t in rec["conversations"]]
        else:
            _write_text_atomic(
                out / "questions_test.jsonl",
                "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions),
            )
            texts += [q["text"] for q in questions] + [q["answer"] for q in questions]
    _write_text_atomic(out / "corpus.txt", "".join(line + "\n" for line in _corpus_lines(texts)))

    manifest = {
        **params,
        "kinds": list(KINDS),
        "colors": list(COLORS),
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
        "question_types": list(QUESTION_TYPES),
        "short_answer_suffix": SHORT_ANSWER_SUFFIX,
    }
    _write_json(manifest_path, manifest)  # written last: its presence marks a complete data set
    return out


def main(argv: list[str] | None = None) -> None:
    """Generates the data set where ``--out`` says and prints its path."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--outline", type=int, default=0, help="width in pixels of a dark rim round every shape")
    args = parser.parse_args(argv)
    path = generate_shapes_dataset(args.out, args.seed, args.n_train, args.n_val, args.n_test, args.image_size,
                                   outline=args.outline)
    print(path)


if __name__ == "__main__":
    main()
