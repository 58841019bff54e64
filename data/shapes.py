"""Seeded generator of a synthetic "shapes" vision-language data set in the LLaVA file layout."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter

FORMAT_VERSION = 6

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 10),
    "purple": (135, 55, 175),
    "orange": (245, 130, 15),
    "black": (25, 25, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
# Each shape sits centred in one cell of a 3x3 grid, and that cell names its position. A size class is one side
# length, a fraction of the cell's side, so a vision tower whose patch is one cell sees each shape whole in one
# patch. Exact colours and one side per size make a shape's patch feature nearly a function of its colour, kind and
# size alone (docs/demo_findings.md): anything else in an image token slows down learning which shape a
# question names. The light background's tint still varies, so no two images are the same file.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.65, "large": 0.85}
POSITION_GRID: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITIONS: tuple[str, ...] = tuple(p for row in POSITION_GRID for p in row)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
SPLITS: tuple[str, ...] = ("train", "val", "test")
TEXT_SPLITS: tuple[str, ...] = ("train", "val")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "position")
# A conversation ends early once this many draws in a row repeat an earlier question: a mix of only count
# questions, or of colour and shape questions about a one-shape image, has fewer questions than turns.
MAX_REPEATED_DRAWS = 100

IMAGE_TOKEN = "<image>"
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Write a short caption for this picture.",
    "Give a brief description of the image.",
    "Summarize the visual content of the image.",
    "Provide a one-sentence caption for this image.",
    "What is shown in this picture? Answer briefly.",
)
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Explain the visual content of the image in great detail.",
    "Describe every shape in this picture and where it is.",
    "What do you see in this image? Please describe it thoroughly.",
)

# Instruction records of each kind per training image: a share below 1 is the chance that an image gets one, a
# larger value the expected number (2.5: two or three). Short questions carry the most signal per token for a
# model that learns to see from scratch, so every image gets a conversation.
INSTRUCT_MIX: dict[str, float] = {"conversation": 1.0, "detail": 0.5, "reasoning": 0.25}
CONVERSATION_TURNS: tuple[int, int] = (3, 6)  # question-answer pairs per conversation, fewest and most
SHORT_ANSWER_SHARE = 0.85  # of conversation questions asked with the short-answer suffix
# Of instruction records, the share with the image token after the first instruction rather than before it:
# LLaVA's data has it either way roughly equally often; LLaVA-1.5's evaluation, and this demo's, put it first.
IMAGE_AFTER_SHARE = 0.5
# How often a conversation turn asks each kind of question. Colour and shape carry the most weight: a model that
# learns to see from scratch reads an object's kind last, and needs the most examples of it.
QUESTION_MIX: dict[str, float] = {"color": 0.3, "shape": 0.3, "position": 0.15, "count": 0.1, "exists": 0.15}

_SUPERSAMPLE = 4  # draw at 4x and box-downsample for anti-aliased edges
OUTLINE_RGB: tuple[int, int, int] = (25, 25, 25)


@dataclass(frozen=True)
class Shape:
    """One shape of a scene; bbox is [x1, y1, x2, y2) in pixels (x2/y2 exclusive)."""

    kind: str
    color: str
    size: str
    position: str
    bbox: tuple[int, int, int, int]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]

    @property
    def cx(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2

    @property
    def cy(self) -> float:
        return (self.bbox[1] + self.bbox[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def full_name(self) -> str:
        return f"{self.size} {self.color} {self.kind}"

    def to_meta(self) -> dict:
        return {
            "kind": self.kind,
            "color": self.color,
            "size": self.size,
            "position": self.position,
            "bbox": list(self.bbox),
        }


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]


# ----------------------------------------------------------------------------- scenes


def position_name(cx: float, cy: float, image_size: int) -> str:
    """Name of the 3x3 grid cell containing the point (cx, cy)."""
    col = min(2, max(0, int(cx * 3 // image_size)))
    row = min(2, max(0, int(cy * 3 // image_size)))
    return POSITION_GRID[row][col]


def side_length(size: str, image_size: int) -> int:
    """Side in pixels of a shape of this size class."""
    cell = image_size // 3
    return min(cell - 2, round(SIZE_FRACTIONS[size] * cell))  # at least one background pixel on each side


def sample_scene(rng: random.Random, image_size: int, count_weights: Sequence[float] | None = None) -> Scene:
    """One to three shapes of distinct kinds and colours, each in its own grid cell, on a light background.

    ``count_weights``: relative weights of one, two and three shapes (None: equally likely).
    """
    cell = image_size // 3
    background = tuple(rng.randint(225, 255) for _ in range(3))
    n = rng.randint(1, 3) if count_weights is None else rng.choices((1, 2, 3), weights=count_weights)[0]
    kinds, colors, cells = rng.sample(KINDS, n), rng.sample(list(COLORS), n), rng.sample(range(9), n)
    shapes: list[Shape] = []
    for kind, color, index in zip(kinds, colors, cells):
        size = rng.choice(SIZES)
        side = side_length(size, image_size)
        row, col = divmod(index, 3)
        x1 = col * cell + (cell - side) // 2
        y1 = row * cell + (cell - side) // 2
        box = (x1, y1, x1 + side, y1 + side)
        shapes.append(Shape(kind, color, size, POSITIONS[index], box))
    return Scene(background, tuple(shapes))  # type: ignore[arg-type]


def _draw_mask(draw: ImageDraw.ImageDraw, s: Shape, f: int) -> None:
    """Fill a shape's area (at ``f`` times the image's resolution) with 255."""
    x1, y1, x2, y2 = (v * f for v in s.bbox)
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    if s.kind == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=255)
    elif s.kind == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=255)
    elif s.kind == "triangle":
        draw.polygon([(cx, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=255)
    elif s.kind == "diamond":
        draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=255)
    elif s.kind == "cross":
        half = w * 0.18
        draw.rectangle([cx - half, y1, cx + half - 1, y2 - 1], fill=255)
        draw.rectangle([x1, cy - half, x2 - 1, cy + half - 1], fill=255)
    else:
        raise ValueError(f"unknown kind {s.kind!r}")


def render_scene(scene: Scene, image_size: int, outline: int = 0) -> Image.Image:
    """Render a scene to an RGB PIL image; ``outline`` > 0 draws each shape's rim, that many pixels wide, in
    ``OUTLINE_RGB`` whatever its colour."""
    f = _SUPERSAMPLE
    size = (image_size * f, image_size * f)
    img = Image.new("RGB", size, scene.background)
    for s in scene.shapes:
        mask = Image.new("L", size, 0)
        _draw_mask(ImageDraw.Draw(mask), s, f)
        img.paste(s.rgb, mask=mask)
        if outline > 0:
            # the rim lies inside the shape's box: erode only there, with a margin of background around it
            x1, y1, x2, y2 = s.bbox
            box = ((x1 - 1) * f, (y1 - 1) * f, (x2 + 1) * f, (y2 + 1) * f)
            area = mask.crop(box)
            inner = area
            for _ in range(outline * f):  # k 3x3 erosions: one (2k+1)x(2k+1) erosion, at a fraction of its cost
                inner = inner.filter(ImageFilter.MinFilter(3))
            img.paste(OUTLINE_RGB, box, mask=ImageChops.subtract(area, inner))
    return img.resize((image_size, image_size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- text helpers


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def where(position: str) -> str:
    """Prepositional phrase for a position name, e.g. 'at the top left', 'on the left', 'in the center'."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def _shape_word(n: int) -> str:
    return f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s")


def _with_image(rng: random.Random, text: str, after_share: float = IMAGE_AFTER_SHARE) -> str:
    return f"{IMAGE_TOKEN}\n{text}" if rng.random() < 1 - after_share else f"{text}\n{IMAGE_TOKEN}"


# Short question/answer pairs; the same wording is used for instruct training data and the test questions.


def color_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"What color is the {target.kind}?"
    return q, target.color if short else f"The {target.kind} is {target.color}."


def shape_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"What shape is the {target.color} object?"
    return q, target.kind if short else f"The {target.color} object is {_a(target.kind)}."


def count_qa(shapes: tuple[Shape, ...], short: bool) -> tuple[str, str]:
    n = len(shapes)
    q = "How many shapes are in the image?"
    if short:
        return q, NUMBER_WORDS[n]
    return q, ("There is one shape in the image." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes in the image.")


def position_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"Where is the {target.name}?"
    return q, target.position if short else f"The {target.name} is {where(target.position)}."


def _exists_qa(rng: random.Random, shapes: tuple[Shape, ...], short: bool) -> tuple[str, str]:
    present = {(s.color, s.kind): s for s in shapes}
    if rng.random() < 0.5:
        s = rng.choice(shapes)
        q = f"Is there {_a(s.name)}?"
        return q, "yes" if short else f"Yes, there is {_a(s.name)} {where(s.position)}."
    while True:
        color, kind = rng.choice(list(COLORS)), rng.choice(KINDS)
        if (color, kind) not in present:
            break
    q = f"Is there {_a(color + ' ' + kind)}?"
    return q, "no" if short else f"No, there is no {color} {kind}."


# ----------------------------------------------------------------------------- records


def _caption(rng: random.Random, shapes: tuple[Shape, ...]) -> str:
    order = list(shapes)
    rng.shuffle(order)
    items = _join([f"{_a(s.full_name)} {where(s.position)}" for s in order])
    templates = (
        lambda: f"{_cap(items)}.",
        lambda: f"An image of {items}.",
        lambda: f"There is {items}.",
        lambda: f"{_cap(_shape_word(len(shapes)))} on a light background: {items}.",
        lambda: f"A picture showing {items}.",
    )
    return rng.choice(templates)()


def _caption_record(rng: random.Random, stem: str, rel: str, shapes: tuple[Shape, ...]) -> dict:
    human = _with_image(rng, rng.choice(CAPTION_INSTRUCTIONS))
    return {
        "id": stem,
        "image": rel,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": _caption(rng, shapes)}],
    }


def _conversation(
    rng: random.Random,
    shapes: tuple[Shape, ...],
    turns_range: tuple[int, int],
    question_mix: dict[str, float],
    image_after_share: float,
) -> list[dict]:
    n_pairs = rng.randint(*turns_range)
    seen: set[str] = set()
    asked: set[Shape] = set()
    turns: list[dict] = []
    repeats = 0  # draws in a row that gave a question already asked
    while len(turns) < 2 * n_pairs and repeats < MAX_REPEATED_DRAWS:
        kind = rng.choices(list(question_mix), weights=list(question_mix.values()))[0]
        short = rng.random() < SHORT_ANSWER_SHARE
        # A shape not asked about yet, while there is one: an earlier answer about the same shape would give
        # this one away in text ("the red object is a circle" → "what colour is the circle?").
        target = rng.choice([s for s in shapes if s not in asked] or list(shapes))
        if kind == "color":
            q, a = color_qa(target, short)
        elif kind == "shape":
            q, a = shape_qa(target, short)
        elif kind == "count":
            q, a = count_qa(shapes, short)
        elif kind == "position":
            q, a = position_qa(target, short)
        else:
            q, a = _exists_qa(rng, shapes, short)
        if q in seen:
            repeats += 1
            continue
        repeats = 0
        seen.add(q)
        if kind in ("color", "shape", "position"):
            asked.add(target)
        if short:
            q += SHORT_ANSWER_SUFFIX
        if not turns:
            q = _with_image(rng, q, image_after_share)
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def _row(s: Shape) -> int:
    return POSITIONS.index(s.position) // 3


def _col(s: Shape) -> int:
    return POSITIONS.index(s.position) % 3


def _relation(a: Shape, b: Shape) -> str:
    """Spatial relation of a relative to b by grid cell ('above and to the left of', ...)."""
    vertical = "above" if _row(a) < _row(b) else "below" if _row(a) > _row(b) else ""
    horizontal = "to the left of" if _col(a) < _col(b) else "to the right of" if _col(a) > _col(b) else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def _detail(shapes: tuple[Shape, ...]) -> str:
    n = len(shapes)
    ordered = sorted(shapes, key=lambda s: (s.cy, s.cx))
    if n == 1:
        parts = ["The image shows a single shape on a plain light background."]
    else:
        parts = [f"The image shows {_shape_word(n)} on a plain light background."]
    for s in ordered:
        parts.append(f"There is {_a(s.full_name)} {where(s.position)}.")
    for i in range(n):
        for j in range(i + 1, n):
            parts.append(f"The {ordered[i].name} is {_relation(ordered[i], ordered[j])} the {ordered[j].name}.")
    if n == 1:
        parts.append(f"The {shapes[0].kind} is the only shape in the image.")
    elif len({s.size for s in shapes}) == 1:
        parts.append(f"{'Both' if n == 2 else 'All three'} shapes are {shapes[0].size}.")
    else:
        large = [s for s in ordered if s.size == "large"]
        small = [s for s in ordered if s.size == "small"]
        parts.append(
            f"{_cap(_join(['the ' + s.name for s in large]))} {'is' if len(large) == 1 else 'are'} larger than "
            f"{_join(['the ' + s.name for s in small])}."
        )
    return " ".join(parts)


_EXTREMES: dict[str, tuple[str, str, Callable[[Shape], int]]] = {
    # direction: (question phrase, comparative phrase, grid key where smaller is more extreme)
    "top": ("to the top of the image", "higher in the image than", _row),
    "bottom": ("to the bottom of the image", "lower in the image than", lambda s: -_row(s)),
    "left": ("to the left side of the image", "further left than", _col),
    "right": ("to the right side of the image", "further right than", lambda s: -_col(s)),
}


def _reason_extreme(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    if len(shapes) < 2:
        return None
    direction = rng.choice(list(_EXTREMES))
    phrase, comparative, key = _EXTREMES[direction]
    ordered = sorted(shapes, key=key)
    if key(ordered[1]) == key(ordered[0]):
        return None  # no single most extreme shape
    others = _join([f"the {s.name}" for s in ordered[1:]])
    q = f"Which shape is closest {phrase}?"
    a = f"The {ordered[0].name} is closest {phrase}. It is {where(ordered[0].position)}, {comparative} {others}."
    return q, a


def _reason_pair_relation(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    if len(shapes) < 2:
        return None
    a, b = rng.sample(shapes, 2)
    axis = rng.choice(("horizontal", "vertical"))
    if axis == "horizontal":
        if _col(a) == _col(b):
            return None
        truth = "to the left of" if _col(a) < _col(b) else "to the right of"
        asked = rng.choice(("to the left of", "to the right of"))
    else:
        if _row(a) == _row(b):
            return None
        truth = "above" if _row(a) < _row(b) else "below"
        asked = rng.choice(("above", "below"))
    q = f"Is the {a.name} {asked} the {b.name}?"
    reason = (
        f"The {a.name} is {where(a.position)} and the {b.name} is {where(b.position)}, "
        f"so the {a.name} is {truth} the {b.name}."
    )
    return q, ("Yes. " if asked == truth else "No. ") + reason


def _reason_bigger(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    if len(shapes) < 2:
        return None
    a, b = rng.sample(shapes, 2)
    if a.size == b.size:
        return None
    big, small = (a, b) if a.size == "large" else (b, a)
    if rng.random() < 0.5:
        q = f"Which is bigger, the {a.kind} or the {b.kind}?"
        ans = f"The {big.kind} is bigger. It is large, while the {small.kind} is small."
    else:
        q = f"Which is bigger, the {a.color} shape or the {b.color} shape?"
        ans = (
            f"The {big.color} shape is bigger. It is a large {big.kind}, "
            f"while the {small.color} shape is a small {small.kind}."
        )
    return q, ans


def _reason_same_size(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    n = len(shapes)
    if n < 2:
        return None
    q = "Are all the shapes the same size?"
    if len({s.size for s in shapes}) == 1:
        return q, f"Yes. {'Both' if n == 2 else 'All three'} shapes are {shapes[0].size}."
    large = [f"the {s.name}" for s in shapes if s.size == "large"]
    small = [f"the {s.name}" for s in shapes if s.size == "small"]
    return q, (
        f"No. {_cap(_join(large))} {'is' if len(large) == 1 else 'are'} large, while "
        f"{_join(small)} {'is' if len(small) == 1 else 'are'} small."
    )


def _reason_more_than_one(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    q = "Is there more than one shape in the image?"
    if len(shapes) == 1:
        s = shapes[0]
        return q, f"No. There is only one shape in the image: {_a(s.full_name)} {where(s.position)}."
    items = _join([_a(s.full_name) for s in shapes])
    return q, f"Yes. There are {NUMBER_WORDS[len(shapes)]} shapes: {items}."


def _reason_half(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    s = rng.choice(shapes)
    if rng.random() < 0.5:
        idx = _row(s)
        if idx == 1:
            return None
        q = f"Is the {s.name} closer to the top or the bottom of the image?"
        side = "top" if idx == 0 else "bottom"
    else:
        idx = _col(s)
        if idx == 1:
            return None
        q = f"Is the {s.name} closer to the left or the right side of the image?"
        side = "left side" if idx == 0 else "right side"
    return q, f"The {s.name} is closer to the {side} of the image, since it is {where(s.position)}."


_REASONERS: tuple[Callable[[random.Random, tuple[Shape, ...]], tuple[str, str] | None], ...] = (
    _reason_extreme,
    _reason_pair_relation,
    _reason_bigger,
    _reason_same_size,
    _reason_more_than_one,
    _reason_half,
)


def _reasoning(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str]:
    while True:
        qa = rng.choice(_REASONERS)(rng, shapes)
        if qa is not None:
            return qa


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
        return [{"from": "human", "value": _with_image(rng, q, image_after_share)}, {"from": "gpt", "value": a}]

    makers = {
        "conversation": lambda: _conversation(rng, shapes, turns_range, question_mix, image_after_share),
        "detail": lambda: single(rng.choice(DETAIL_INSTRUCTIONS), _detail(shapes)),
        "reasoning": lambda: single(*_reasoning(rng, shapes)),
    }
    records = []
    for kind, make in makers.items():
        share = mix[kind]
        for _ in range(int(share) + (rng.random() < share % 1)):
            records.append({"id": stem, "type": kind, "image": rel, "conversations": make()})
    return records


PER_SHAPE_QUESTIONS: dict[str, Callable[[Shape, bool], tuple[str, str]]] = {
    "color": color_qa, "shape": shape_qa, "position": position_qa,
}


def _every_shape_records(stem: str, rel: str, shapes: tuple[Shape, ...], question_types: Sequence[str]) -> list[dict]:
    """One short question per conversation, image first, for every shape and each of ``question_types``: each
    image is asked the same question about each of its shapes (README, "The embedded demo")."""
    records = []
    for shape in shapes:
        for qtype in question_types:
            question, answer = PER_SHAPE_QUESTIONS[qtype](shape, True)
            turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}{SHORT_ANSWER_SUFFIX}"},
                     {"from": "gpt", "value": answer}]
            records.append({"id": stem, "type": "conversation", "image": rel, "conversations": turns})
    return records


def _test_questions(rng: random.Random, stem: str, rel: str, shapes: tuple[Shape, ...]) -> list[dict]:
    qas: list[tuple[str, str, str]] = []
    for qtype in QUESTION_TYPES:
        if qtype == "count":
            qas.append((qtype, *count_qa(shapes, True)))
            continue
        make = PER_SHAPE_QUESTIONS[qtype]
        k = rng.randint(1, min(2, len(shapes)))
        for target in rng.sample(shapes, k):
            qas.append((qtype, *make(target, True)))
    return [
        {"question_id": f"{stem}_q{i}", "image": rel, "text": q + SHORT_ANSWER_SUFFIX, "answer": a, "type": t,
         "shapes": len(shapes)}
        for i, (t, q, a) in enumerate(qas)
    ]


# ----------------------------------------------------------------------------- writing


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
) -> pathlib.Path:
    """Generate (or reuse, if already generated with the same parameters) the shapes data set in out_dir.

    ``instruct_mix``: instruction records of each kind per training image (``INSTRUCT_MIX`` by default);
    ``conversation_turns``: the fewest and most question-answer pairs of a conversation (fewer where the mix runs
    out of questions not yet asked, ``MAX_REPEATED_DRAWS``); ``question_mix``: how
    often a conversation turn asks each kind of question (``QUESTION_MIX`` by default); ``image_after_share``:
    of instruction records, the share with the image after the first instruction; ``outline``: the width in pixels
    of a dark rim drawn round every shape whatever its colour (0: none); ``shape_count_weights``: relative weights
    of training and validation images with one, two and three shapes (the test split keeps them equally likely);
    ``every_shape_questions``: question types (of ``PER_SHAPE_QUESTIONS``) asked about every shape of every training
    and validation image, one short question per conversation, besides ``instruct_mix``.
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
    if not set(per_shape) <= set(PER_SHAPE_QUESTIONS) or len(set(per_shape)) != len(per_shape):
        raise ValueError(f"every_shape_questions takes distinct types among {sorted(PER_SHAPE_QUESTIONS)}, "
                         f"got {every_shape_questions}")
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
              "shape_count_weights": count_weights, "every_shape_questions": per_shape}
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
                captions.append(_caption_record(text_rng, stem, rel, scene.shapes))
                instruct.extend(_every_shape_records(stem, rel, scene.shapes, per_shape))
                instruct.extend(
                    _instruct_records(
                        text_rng, stem, rel, scene.shapes, mix, turns_range, questions_mix, image_after_share
                    )
                )
            else:
                questions.extend(_test_questions(text_rng, stem, rel, scene.shapes))
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
