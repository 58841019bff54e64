"""The demo's longer texts about a scene: captions (the align stage), detailed descriptions and reasoning
answers (the finetune stage's "detail" and "reasoning" records, after LLaVA-Instruct's three kinds)."""

from __future__ import annotations

import random
from collections.abc import Callable

from llava_pl.demo.questions import (
    NUMBER_WORDS,
    capitalized,
    join_words,
    shapes_phrase,
    where,
    with_article,
    with_image,
)
from llava_pl.demo.scenes import Shape, grid_col, grid_row

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


def _caption(rng: random.Random, shapes: tuple[Shape, ...]) -> str:
    order = list(shapes)
    rng.shuffle(order)
    items = join_words([f"{with_article(s.full_name)} {where(s.position)}" for s in order])
    templates = (
        lambda: f"{capitalized(items)}.",
        lambda: f"An image of {items}.",
        lambda: f"There is {items}.",
        lambda: f"{capitalized(shapes_phrase(len(shapes)))} on a light background: {items}.",
        lambda: f"A picture showing {items}.",
    )
    return rng.choice(templates)()


def caption_record(rng: random.Random, stem: str, rel: str, shapes: tuple[Shape, ...]) -> dict:
    """One align-stage record: a caption instruction and a caption naming every shape and where it is."""
    human = with_image(rng, rng.choice(CAPTION_INSTRUCTIONS))
    return {
        "id": stem,
        "image": rel,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": _caption(rng, shapes)}],
    }



def _relation(a: Shape, b: Shape) -> str:
    """Spatial relation of a relative to b by grid cell ('above and to the left of', ...)."""
    vertical = "above" if grid_row(a) < grid_row(b) else "below" if grid_row(a) > grid_row(b) else ""
    horizontal = (
        "to the left of" if grid_col(a) < grid_col(b) else "to the right of" if grid_col(a) > grid_col(b) else ""
    )
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def detail_description(shapes: tuple[Shape, ...]) -> str:
    """Every shape, where it is, how the shapes lie to each other and how their sizes compare."""
    n = len(shapes)
    ordered = sorted(shapes, key=lambda s: (s.cy, s.cx))
    if n == 1:
        parts = ["The image shows a single shape on a plain light background."]
    else:
        parts = [f"The image shows {shapes_phrase(n)} on a plain light background."]
    for s in ordered:
        parts.append(f"There is {with_article(s.full_name)} {where(s.position)}.")
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
        larger = capitalized(join_words(["the " + s.name for s in large]))
        parts.append(
            f"{larger} {'is' if len(large) == 1 else 'are'} larger than {join_words(['the ' + s.name for s in small])}."
        )
    return " ".join(parts)



_EXTREMES: dict[str, tuple[str, str, Callable[[Shape], int]]] = {
    # direction: (question phrase, comparative phrase, grid key where smaller is more extreme)
    "top": ("to the top of the image", "higher in the image than", grid_row),
    "bottom": ("to the bottom of the image", "lower in the image than", lambda s: -grid_row(s)),
    "left": ("to the left side of the image", "further left than", grid_col),
    "right": ("to the right side of the image", "further right than", lambda s: -grid_col(s)),
}


def _reason_extreme(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    if len(shapes) < 2:
        return None
    direction = rng.choice(list(_EXTREMES))
    phrase, comparative, key = _EXTREMES[direction]
    ordered = sorted(shapes, key=key)
    if key(ordered[1]) == key(ordered[0]):
        return None  # no single most extreme shape
    others = join_words([f"the {s.name}" for s in ordered[1:]])
    q = f"Which shape is closest {phrase}?"
    a = f"The {ordered[0].name} is closest {phrase}. It is {where(ordered[0].position)}, {comparative} {others}."
    return q, a


def _reason_pair_relation(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    if len(shapes) < 2:
        return None
    a, b = rng.sample(shapes, 2)
    axis = rng.choice(("horizontal", "vertical"))
    if axis == "horizontal":
        if grid_col(a) == grid_col(b):
            return None
        truth = "to the left of" if grid_col(a) < grid_col(b) else "to the right of"
        asked = rng.choice(("to the left of", "to the right of"))
    else:
        if grid_row(a) == grid_row(b):
            return None
        truth = "above" if grid_row(a) < grid_row(b) else "below"
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
        f"No. {capitalized(join_words(large))} {'is' if len(large) == 1 else 'are'} large, while "
        f"{join_words(small)} {'is' if len(small) == 1 else 'are'} small."
    )


def _reason_more_than_one(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    q = "Is there more than one shape in the image?"
    if len(shapes) == 1:
        s = shapes[0]
        return q, f"No. There is only one shape in the image: {with_article(s.full_name)} {where(s.position)}."
    items = join_words([with_article(s.full_name) for s in shapes])
    return q, f"Yes. There are {NUMBER_WORDS[len(shapes)]} shapes: {items}."


def _reason_half(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str] | None:
    s = rng.choice(shapes)
    if rng.random() < 0.5:
        idx = grid_row(s)
        if idx == 1:
            return None
        q = f"Is the {s.name} closer to the top or the bottom of the image?"
        side = "top" if idx == 0 else "bottom"
    else:
        idx = grid_col(s)
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


def reasoning_qa(rng: random.Random, shapes: tuple[Shape, ...]) -> tuple[str, str]:
    """A question that needs a step of reasoning about the scene, with an answer that gives the step."""
    while True:
        qa = rng.choice(_REASONERS)(rng, shapes)
        if qa is not None:
            return qa

