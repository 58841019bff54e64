"""Small LLaVA data sets written to disk for the data tests: JSON records over drawn images."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import ChatTemplate

TOKENS_PER_IMAGE = 5


def processor(size: int = 16) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def draw_image(path: Path, seed: int, size: tuple[int, int] | None = None) -> None:
    """A stand-in image: a few coloured boxes on a background, of a random aspect unless ``size`` is given."""
    rng = random.Random(seed)
    size = size or (rng.randint(20, 64), rng.randint(20, 64))
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.rectangle([x, y, x + 5, y + 5], fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def record(sample_id: str, turns: list[str], image: str | None = None) -> dict[str, Any]:
    roles = ["human", "gpt"]
    result: dict[str, Any] = {"id": sample_id}
    if image is not None:
        result["image"] = image
    result["conversations"] = [{"from": roles[i % 2], "value": value} for i, value in enumerate(turns)]
    return result


def mixed_records(count: int, seed: int = 0, text_every: int = 4) -> list[dict[str, Any]]:
    """Image and text-only conversations of varied lengths, with repeated ids."""
    rng = random.Random(seed)
    words = "red blue green circle square triangle left right top bottom big small".split()
    records = []
    for index in range(count):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns += [" ".join(rng.choices(words, k=rng.randint(2, 6))) + "?",
                      " ".join(rng.choices(words, k=rng.randint(1, 12))) + "."]
        sample_id = f"s{index // 2}"  # every id twice
        if index % text_every == text_every - 1:
            records.append(record(sample_id, turns))
        else:
            turns[0] = f"<image>\n{turns[0]}" if index % 2 else f"{turns[0]}\n<image>"
            records.append(record(sample_id, turns, f"img/{index:04d}.png"))
    return records


def write_dataset(folder: Path, records: list[dict[str, Any]], name: str = "data.json") -> Path:
    """Writes ``records`` as a JSON array and draws every image they name that is not there yet."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, entry in enumerate(records):
        images = entry.get("image") or []
        for relative in [images] if isinstance(images, str) else images:
            if not (folder / relative).exists():
                draw_image(folder / relative, number)
    path = folder / name
    path.write_text(json.dumps(records, ensure_ascii=False))
    return path


def connect(module, tokenizer, size: int = 16, template=None) -> None:
    module.connect(tokenizer, template or ChatTemplate(), processor(size), TOKENS_PER_IMAGE)


def transform(size: int = 16) -> ImageTransform:
    return ImageTransform(processor(size))
