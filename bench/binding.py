"""How fast the demo's tiny LLM learns binding, i.e. finding which of several shapes a question names, from
ideal image tokens, and what any other content in those tokens does to it.

The image is the demo's 3x3 grid as nine tokens given to the LLM as embeddings; no vision tower is involved.
``additive``: a shape's token is a learned colour vector plus a learned kind vector (an ideal projector on ideal
features); empty cells share one learned vector. ``entangled``: the same plus a fixed random vector per
colour-and-kind pair, three times the embeddings' initial scale, like the part of a random tower's patch feature
that colour and kind do not explain additively. ``opaque``: a fixed random 128-d code per colour-and-kind pair
(and one for empty cells) through a learned ``mlp2x_gelu`` projector, like a frozen tower's features with
nothing additive about them. Training: one conversation per scene in the demo's ChatML template (the LLM and
tokenizer are the demo's, from ``conf/``), asking every shape's colour and kind (``--questions all``) or one of
them (``--questions one``).
Evaluation: the first answer token for each shape of held-out scenes, on one-shape and on two- or three-shape
images, against the accuracy of naming a random shape present. docs/demo_findings.md quotes it.

    OMP_NUM_THREADS=1 nice python bench/binding.py   # additive and entangled, 500 of 1,500 steps each: 15 min
    OMP_NUM_THREADS=1 nice python bench/binding.py --tokens entangled opaque --questions one --batch-size 48
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose data.py would hide the data package

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup  # noqa: E402

from data.shapes import (  # noqa: E402
    COLORS,
    IMAGE_TOKEN,
    KINDS,
    POSITIONS,
    SHORT_ANSWER_SUFFIX,
    Scene,
    color_qa,
    sample_scene,
    shape_qa,
)
from llava_pl.constants import IGNORE_INDEX, IMAGE_TOKEN_ID  # noqa: E402
from llava_pl.data.conversation import parse_record  # noqa: E402
from llava_pl.data.tokenization import tokenize_segments  # noqa: E402
from llava_pl.generate import prompt_ids  # noqa: E402
from llava_pl.model.projector import MLPProjector  # noqa: E402
from llava_pl.resolvers import register_resolvers  # noqa: E402

CELLS = len(POSITIONS)
CODE_WIDTH = 128  # the demo's vision tower width
COLUMNS = ("color 1 shape", "color 2-3 shapes", "shape 1 shape", "shape 2-3 shapes")


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(question type, question, one-word answer) for every shape's colour and kind, worded as the demo's."""
    return [("color", *color_qa(s, True)) for s in scene.shapes] + [("shape", *shape_qa(s, True)) for s in scene.shapes]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    scene: Scene


class GridTokens(torch.nn.Module):
    """The nine image tokens of a scene: learned colour + learned kind vectors, plus an optional fixed vector per
    colour-and-kind pair (``entangled_scale`` times the initial scale)."""

    def __init__(self, width: int, init_std: float, entangled_scale: float) -> None:
        super().__init__()
        self.color = torch.nn.Parameter(torch.randn(len(COLORS), width) * init_std)
        self.kind = torch.nn.Parameter(torch.randn(len(KINDS), width) * init_std)
        self.empty = torch.nn.Parameter(torch.randn(width) * init_std)
        pairs = torch.randn(len(COLORS), len(KINDS), width, generator=torch.Generator().manual_seed(1)) * init_std
        self.register_buffer("pair", pairs * entangled_scale)

    def forward(self, scene: Scene) -> torch.Tensor:
        tokens = [self.empty] * CELLS
        for shape in scene.shapes:
            c, k = list(COLORS).index(shape.color), KINDS.index(shape.kind)
            tokens[POSITIONS.index(shape.position)] = self.color[c] + self.kind[k] + self.pair[c, k]
        return torch.stack(tokens)


class OpaqueGridTokens(torch.nn.Module):
    """The nine image tokens of a scene: a fixed random code per colour-and-kind pair (one for empty cells) through
    a learned two-layer GELU projector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        codes = torch.randn(len(COLORS) * len(KINDS) + 1, CODE_WIDTH, generator=torch.Generator().manual_seed(2))
        self.register_buffer("codes", codes)  # the last row is the empty cell's
        self.projector = MLPProjector(CODE_WIDTH, width)

    def forward(self, scene: Scene) -> torch.Tensor:
        index = [len(self.codes) - 1] * CELLS
        for shape in scene.shapes:
            index[POSITIONS.index(shape.position)] = list(COLORS).index(shape.color) * len(KINDS) + KINDS.index(
                shape.kind)
        return self.projector(self.codes[index])


def training_example(
    scene: Scene, rng: random.Random, tokenizer: PreTrainedTokenizerBase, template, one_question: bool = False
) -> Example:
    """One conversation asking every shape's colour and kind in a random order (``one_question``: only the first
    of them), tokenized as training does."""
    pairs = [(question, answer) for _, question, answer in questions(scene)]
    rng.shuffle(pairs)
    pairs = pairs[:1] if one_question else pairs
    turns = []
    for i, (question, answer) in enumerate(pairs):
        text = (f"{IMAGE_TOKEN}\n" if i == 0 else "") + question + SHORT_ANSWER_SUFFIX
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    conversation = parse_record({"id": "bench", "image": "grid", "conversations": turns}, "bench", 0)
    tokens = tokenize_segments(template.segments(conversation.messages, tokenizer), tokenizer, CELLS,
                               add_special_tokens=template.add_special_tokens)
    return Example(tokens.input_ids, tokens.labels, scene)


def _embed(llm: PreTrainedModel, grid: GridTokens, rows: list[list[int]], scenes: list[Scene]) -> torch.Tensor:
    ids = torch.tensor(rows)
    image = ids == IMAGE_TOKEN_ID
    embeds = llm.get_input_embeddings()(ids.clamp(min=0))
    return embeds.masked_scatter(image[..., None], torch.cat([grid(scene) for scene in scenes]))


def _pad(rows: list[list[int]], value: int, left: bool = False) -> list[list[int]]:
    width = max(map(len, rows))
    return [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]


def evaluate(llm, grid, tokenizer, template, scenes: list[Scene]) -> dict[str, float]:
    """First-token accuracy per (question kind, one shape or several)."""
    hits: dict[str, list[bool]] = {}
    llm.eval()
    with torch.no_grad():
        for scene in scenes:
            asked = questions(scene)
            rows = [prompt_ids(q + SHORT_ANSWER_SUFFIX, template, tokenizer, CELLS).tolist() for _, q, _ in asked]
            padded = _pad(rows, tokenizer.pad_token_id, left=True)
            mask = torch.tensor(_pad([[1] * len(r) for r in rows], 0, left=True))
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            logits = llm(inputs_embeds=_embed(llm, grid, padded, [scene] * len(rows)), attention_mask=mask,
                         position_ids=positions).logits[:, -1]
            for (qtype, _, answer), token in zip(asked, logits.argmax(-1).tolist()):
                key = f"{qtype} {'1 shape' if len(scene.shapes) == 1 else '2-3 shapes'}"
                hits.setdefault(key, []).append(token == tokenizer(answer, add_special_tokens=False).input_ids[0])
    llm.train()
    return {key: sum(v) / len(v) for key, v in sorted(hits.items())}


def run(tokens: str, steps: int, eval_at: list[int], batch_size: int, lr: float, tokenizer: PreTrainedTokenizerBase,
        llm_cfg, template, train: list[Scene], test: list[Scene], seed: int,
        one_question: bool = False) -> Iterator[tuple[int, dict[str, float]]]:
    """Trains on a cosine schedule of ``steps`` steps and yields the evaluation at each step of ``eval_at``."""
    torch.manual_seed(seed)
    llm = instantiate(llm_cfg, tokenizer=tokenizer)
    width = llm.config.hidden_size
    grid = (OpaqueGridTokens(width) if tokens == "opaque" else
            GridTokens(width, llm.config.initializer_range, 3.0 if tokens == "entangled" else 0.0))
    params = [*llm.parameters(), *grid.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(0.03 * steps), steps)
    rng = random.Random(seed)
    for step in range(1, max(eval_at) + 1):
        batch = [training_example(rng.choice(train), rng, tokenizer, template, one_question) for _ in range(batch_size)]
        rows = [e.input_ids for e in batch]
        mask = torch.tensor(_pad([[1] * len(r) for r in rows], 0))
        labels = torch.tensor(_pad([e.labels for e in batch], IGNORE_INDEX))
        embeds = _embed(llm, grid, _pad(rows, tokenizer.pad_token_id), [e.scene for e in batch])
        loss = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step in eval_at:
            yield step, evaluate(llm, grid, tokenizer, template, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", nargs="+", default=["additive", "entangled"],
                        choices=["additive", "entangled", "opaque"])
    parser.add_argument("--questions", choices=["all", "one"], default="all",
                        help="per training conversation: every shape's colour and kind, or one of those questions")
    parser.add_argument("--steps", type=int, default=1500, help="length of the cosine learning-rate schedule")
    parser.add_argument("--eval-at", type=int, nargs="+", default=[250, 500], help="steps to evaluate at; "
                        "training stops at the last")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-scenes", type=int, default=150)
    args = parser.parse_args()
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={ROOT / 'data' / 'generated'}", "run_dir=."])
    for step in cfg.data.prepare:  # the demo's data set and tokenizer, as train.py makes them (skipped if made)
        instantiate(step)
    tokenizer = instantiate(cfg.model.llm.tokenizer)
    template = instantiate(cfg.model.llm.template)
    scene_rng = random.Random(0)
    train = [sample_scene(scene_rng, 96) for _ in range(8000)]
    test = [sample_scene(scene_rng, 96) for _ in range(args.test_scenes)]
    present = [1 / len(s.shapes) for s in test if len(s.shapes) > 1]
    print(f"naming a random shape present on 2-3 shape images: {sum(present) / len(present):.0%}")
    print(f"{'tokens':<10} {'steps':>5}  " + "  ".join(f"{k:>17}" for k in COLUMNS))
    for tokens in args.tokens:
        for step, r in run(tokens, args.steps, args.eval_at, args.batch_size, args.lr, tokenizer,
                           cfg.model.llm.model, template, train, test, seed=0, one_question=args.questions == "one"):
            print(f"{tokens:<10} {step:>5}  " + "  ".join(f"{r[k]:>17.0%}" for k in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
