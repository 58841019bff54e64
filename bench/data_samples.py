"""The synthetic data of ``bench.data``: COCO-sized JPEGs with a photo's compressed size, under
LLaVA-Instruct-like conversations of 1-5 turns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("the a man woman dog cat table street car bus person sitting standing next to near on top of a red blue "
         "green white black large small wooden kitchen room window tree sky water picture shows there is are two "
         "three people holding looking at while in front background").split()


def photo(path: Path, rng: random.Random) -> None:
    """A COCO-sized JPEG (640 × 480 or 480 × 640) with smooth regions and noise, ~ a photo's compressed size."""
    width, height = (640, 480) if rng.random() < 0.7 else (480, 640)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.1, 0.4) + y * rng.uniform(0.1, 0.4) + rng.uniform(0, 255)) % 256
                     for _ in range(3)], axis=-1)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 12, base.shape)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def sentence(rng: random.Random, low: int, high: int) -> str:
    """A capitalised sentence of ``low`` to ``high`` common caption words."""
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + "."


def make_data(folder: Path, count: int) -> Path:
    """``count`` samples in ``folder``: ``images/``, ``instruct.json`` and a ``corpus.txt`` of their texts."""
    rng = random.Random(0)
    (folder / "images").mkdir(parents=True)
    records = []
    for index in range(count):
        name = f"{index:012d}.jpg"
        photo(folder / "images" / name, rng)
        turns = []
        for turn in range(rng.choice([1, 1, 2, 3, 5])):
            turns += [{"from": "human", "value": sentence(rng, 6, 14)[:-1] + "?"},
                      {"from": "gpt", "value": " ".join(sentence(rng, 8, 20) for _ in range(rng.randint(1, 4)))}]
        first = turns[0]["value"]
        turns[0]["value"] = f"<image>\n{first}" if index % 2 else f"{first}\n<image>"
        records.append({"id": name[:-4], "image": name, "conversations": turns})
    path = folder / "instruct.json"
    path.write_text(json.dumps(records))
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(turn["value"] for r in records for turn in r["conversations"]))
    return path
