"""The demo's questions about a scene, and the wording all its texts share: the short question-answer pairs,
multi-turn conversations of them, and the held-out test questions (same wording as in training)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from llava_pl.demo.scenes import COLORS, KINDS, Shape

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "position")
# A conversation ends early once this many draws in a row repeat an earlier question: a mix of only count
# questions, or of colour and shape questions about a one-shape image, has fewer questions than turns.
MAX_REPEATED_DRAWS = 100

IMAGE_TOKEN = "<image>"
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

SHORT_ANSWER_SHARE = 0.85  # of conversation questions asked with the short-answer suffix
# Of instruction records, the share with the image token after the first instruction rather than before it:
# LLaVA's data has it either way roughly equally often; LLaVA-1.5's evaluation, and this demo's, put it first.
IMAGE_AFTER_SHARE = 0.5
# How often a conversation turn asks each kind of question. Colour and shape carry the most weight: a model that
# learns to see from scratch reads an object's kind last, and needs the most examples of it.
QUESTION_MIX: dict[str, float] = {"color": 0.3, "shape": 0.3, "position": 0.15, "count": 0.1, "exists": 0.15}


def with_article(phrase: str) -> str:
    """'a circle', 'an orange square'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalized(text: str) -> str:
    """The text with its first letter upper case."""
    return text[0].upper() + text[1:]


def join_words(items: list[str]) -> str:
    """'a, b and c'."""
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


def shapes_phrase(n: int) -> str:
    """'one shape', 'two shapes'."""
    return f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s")


def with_image(rng: random.Random, text: str, after_share: float = IMAGE_AFTER_SHARE) -> str:
    """The text with the image token on its own line before it, or after it with chance ``after_share``."""
    return f"{IMAGE_TOKEN}\n{text}" if rng.random() < 1 - after_share else f"{text}\n{IMAGE_TOKEN}"


# Short question/answer pairs; the same wording is used for instruct training data and the test questions.


def color_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"What color is the {target.kind}?"
    return q, target.color if short else f"The {target.kind} is {target.color}."


def shape_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"What shape is the {target.color} object?"
    return q, target.kind if short else f"The {target.color} object is {with_article(target.kind)}."


def count_qa(shapes: tuple[Shape, ...], short: bool) -> tuple[str, str]:
    n = len(shapes)
    q = "How many shapes are in the image?"
    if short:
        return q, NUMBER_WORDS[n]
    return q, ("There is one shape in the image." if n == 1 else f"There are {NUMBER_WORDS[n]} shapes in the image.")


def position_qa(target: Shape, short: bool) -> tuple[str, str]:
    q = f"Where is the {target.name}?"
    return q, target.position if short else f"The {target.name} is {where(target.position)}."


def exists_qa(rng: random.Random, shapes: tuple[Shape, ...], short: bool) -> tuple[str, str]:
    """'Is there a red circle?' about a shape of the scene or, as often, a colour and kind it lacks."""
    present = {(s.color, s.kind): s for s in shapes}
    if rng.random() < 0.5:
        s = rng.choice(shapes)
        q = f"Is there {with_article(s.name)}?"
        return q, "yes" if short else f"Yes, there is {with_article(s.name)} {where(s.position)}."
    while True:
        color, kind = rng.choice(list(COLORS)), rng.choice(KINDS)
        if (color, kind) not in present:
            break
    q = f"Is there {with_article(color + ' ' + kind)}?"
    return q, "no" if short else f"No, there is no {color} {kind}."


def conversation(
    rng: random.Random,
    shapes: tuple[Shape, ...],
    turns_range: tuple[int, int],
    question_mix: dict[str, float],
    image_after_share: float,
) -> list[dict]:
    """The turns of one conversation: short and long questions drawn by ``question_mix``, the image with the
    first; ``turns_range`` pairs at most, fewer where the mix runs out of questions not yet asked."""
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
            q, a = exists_qa(rng, shapes, short)
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
            q = with_image(rng, q, image_after_share)
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


PER_SHAPE_QUESTIONS: dict[str, Callable[[Shape, bool], tuple[str, str]]] = {
    "color": color_qa, "shape": shape_qa, "position": position_qa,
}
PER_IMAGE_QUESTIONS: dict[str, Callable[[tuple[Shape, ...], bool], tuple[str, str]]] = {"count": count_qa}
EVERY_SHAPE_TYPES: tuple[str, ...] = (*PER_SHAPE_QUESTIONS, *PER_IMAGE_QUESTIONS)


def every_shape_records(stem: str, rel: str, shapes: tuple[Shape, ...], question_types: Sequence[str]) -> list[dict]:
    """One short question per conversation, image first: for every shape and each per-shape type of
    ``question_types`` (each image is asked the same question about each of its shapes), then once per image for
    each per-image type (count) (docs/demo.md)."""
    pairs = [PER_SHAPE_QUESTIONS[qtype](shape, True)
             for shape in shapes for qtype in question_types if qtype in PER_SHAPE_QUESTIONS]
    pairs += [PER_IMAGE_QUESTIONS[qtype](shapes, True) for qtype in question_types if qtype in PER_IMAGE_QUESTIONS]
    return [_one_question_record(stem, rel, question, answer) for question, answer in pairs]


def some_image_records(
    rng: random.Random, stem: str, rel: str, shapes: tuple[Shape, ...], shares: Mapping[str, float]
) -> list[dict]:
    """For each question type of ``shares`` (of ``EVERY_SHAPE_TYPES``), with chance its share, one short question
    about this image in a conversation of its own, image first; a per-shape type asks about one shape drawn at
    random."""
    records = []
    for qtype, share in shares.items():
        if rng.random() >= share:
            continue
        if qtype in PER_IMAGE_QUESTIONS:
            question, answer = PER_IMAGE_QUESTIONS[qtype](shapes, True)
        else:
            question, answer = PER_SHAPE_QUESTIONS[qtype](rng.choice(shapes), True)
        records.append(_one_question_record(stem, rel, question, answer))
    return records


def _one_question_record(stem: str, rel: str, question: str, answer: str) -> dict:
    return {"id": stem, "type": "conversation", "image": rel,
            "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}{SHORT_ANSWER_SUFFIX}"},
                              {"from": "gpt", "value": answer}]}


def held_out_questions(rng: random.Random, stem: str, rel: str, shapes: tuple[Shape, ...]) -> list[dict]:
    """The test split's short questions about one image: one count question and, per other type, one or two
    shapes asked about."""
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

