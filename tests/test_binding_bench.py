"""bench/binding.py's testbed: the image tokens are built as documented, and only the answers are supervised."""

from __future__ import annotations

import random

import torch

from bench.binding import CELLS, GridTokens, OpaqueGridTokens, training_example
from data.shapes import COLORS, KINDS, POSITIONS, Scene, sample_scene
from data.tokenizer import IM_END
from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from llava_pl.data.templates import ChatTemplate


def _scene_with_shapes(count: int) -> Scene:
    rng = random.Random(0)
    while len((scene := sample_scene(rng, 96)).shapes) != count:
        pass
    return scene


def test_grid_tokens_are_colour_plus_kind_in_each_shape_cell() -> None:
    scene = _scene_with_shapes(3)
    torch.manual_seed(0)
    additive = GridTokens(16, 0.02, entangled_scale=0.0)
    torch.manual_seed(0)
    entangled = GridTokens(16, 0.02, entangled_scale=3.0)
    plain, mixed = additive(scene), entangled(scene)
    assert plain.shape == (CELLS, 16)
    occupied = set()
    for shape in scene.shapes:
        cell, c, k = POSITIONS.index(shape.position), list(COLORS).index(shape.color), KINDS.index(shape.kind)
        occupied.add(cell)
        assert torch.equal(plain[cell], additive.color[c] + additive.kind[k])
        assert torch.allclose(mixed[cell] - plain[cell], entangled.pair[c, k])
    for cell in set(range(CELLS)) - occupied:
        assert torch.equal(plain[cell], additive.empty) and torch.equal(mixed[cell], plain[cell])
    assert 0.04 < entangled.pair.std().item() < 0.08  # three times the 0.02 initial scale


def test_training_example_supervises_every_answer_and_nothing_else(tokenizer) -> None:
    scene = _scene_with_shapes(2)
    example = training_example(scene, random.Random(1), tokenizer, ChatTemplate())
    assert example.input_ids.count(IMAGE_TOKEN_ID) == CELLS
    supervised = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])
    answers = sorted([s.color for s in scene.shapes] + [s.kind for s in scene.shapes])
    assert supervised.endswith(IM_END)  # each answer and its end-of-turn token, nothing else
    assert sorted(supervised.split(IM_END)[:-1]) == answers


def test_opaque_tokens_are_one_fixed_code_per_pair_through_a_learned_projector() -> None:
    scene = _scene_with_shapes(3)
    torch.manual_seed(0)
    grid = OpaqueGridTokens(16)
    tokens = grid(scene)
    assert tokens.shape == (CELLS, 16)
    occupied = {POSITIONS.index(s.position) for s in scene.shapes}
    empty = [tokens[cell] for cell in set(range(CELLS)) - occupied]
    assert all(torch.equal(token, empty[0]) for token in empty)
    for shape in scene.shapes:  # the same pair alone in another scene gives the same token
        cell = POSITIONS.index(shape.position)
        torch.testing.assert_close(grid(Scene(scene.background, (shape,)))[cell], tokens[cell])
    assert len({tuple(tokens[cell].tolist()) for cell in occupied}) == 3  # distinct pairs, distinct tokens
    tokens.sum().backward()
    assert all(p.grad is not None for p in grid.projector.parameters())
    assert not grid.codes.requires_grad  # the codes stay fixed; only the projector learns


def test_one_question_conversations_supervise_one_answer(tokenizer) -> None:
    scene = _scene_with_shapes(3)
    example = training_example(scene, random.Random(1), tokenizer, ChatTemplate(), one_question=True)
    supervised = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])
    answers = [s.color for s in scene.shapes] + [s.kind for s in scene.shapes]
    assert supervised.count(IM_END) == 1 and supervised.removesuffix(IM_END) in answers
