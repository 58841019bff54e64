"""Image context records (captions and normalised object boxes) and their rendering as symbolic text."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Instance:
    category: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of the width and height


@dataclass(frozen=True)
class ImageContext:
    """One input record: ``{"id", "image", "captions": [...], "instances": [{"category", "bbox"}]}``."""

    id: str
    image: str
    captions: tuple[str, ...]
    instances: tuple[Instance, ...]


class ContextError(ValueError):
    """An input record is malformed; the message names the file, the line, the record and the problem."""


def _instance(raw: Any, where: str, position: int) -> Instance:
    if not isinstance(raw, dict):
        raise ContextError(f"{where}: instances[{position}] is not an object: {raw!r}")
    category, bbox = raw.get("category"), raw.get("bbox")
    if not isinstance(category, str) or not category.strip():
        raise ContextError(f"{where}: instances[{position}] has no 'category' string")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise ContextError(f"{where}: instances[{position}] ({category}): 'bbox' must be 4 numbers, got {bbox!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise ContextError(
            f"{where}: instances[{position}] ({category}): bbox {bbox} is not normalised to [0, 1] "
            "(divide pixel coordinates by the image width and height)"
        )
    if x2 < x1 or y2 < y1:
        raise ContextError(f"{where}: instances[{position}] ({category}): bbox {bbox} is not [x1, y1, x2, y2] "
                           "with x1 <= x2 and y1 <= y2")
    return Instance(category.strip(), (x1, y1, x2, y2))


def parse_context(raw: Any, where: str) -> ImageContext:
    """Checks one decoded record; ``where`` names the file and line in errors."""
    if not isinstance(raw, dict):
        raise ContextError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    record_id = raw.get("id")
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool) or str(record_id) == "":
        raise ContextError(f"{where}: missing 'id' (a string or an integer)")
    where = f"{where} (id {record_id})"
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise ContextError(f"{where}: missing 'image' (the image's path relative to the image folder)")
    captions = raw.get("captions", [])
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ContextError(f"{where}: 'captions' must be a list of strings")
    captions = [c.strip() for c in captions if c.strip()]
    instances = raw.get("instances", [])
    if not isinstance(instances, list):
        raise ContextError(f"{where}: 'instances' must be a list")
    if not captions and not instances:
        raise ContextError(f"{where}: no captions and no instances: nothing to write about")
    return ImageContext(str(record_id), image, tuple(captions),
                        tuple(_instance(item, where, position) for position, item in enumerate(instances)))


def read_contexts(path: str | os.PathLike) -> list[ImageContext]:
    """Reads JSON Lines (or a JSON array) of context records; every record is checked before any is used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"context file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ContextError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(items, list):
            raise ContextError(f"{path}: expected a JSON array of records (or use JSON Lines, .jsonl)")
        located = [(f"{path}: record {index}", item) for index, item in enumerate(items)]
    else:
        located = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ContextError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    contexts = [parse_context(item, where) for where, item in located]
    seen: dict[str, str] = {}
    for (where, _), context in zip(located, contexts):
        if context.id in seen:
            raise ContextError(f"{where}: id {context.id} already used at {seen[context.id]}")
        seen[context.id] = where
    return contexts


def symbolic_context(
    context: ImageContext,
    use_boxes: bool,
    captions_header: str = "Captions:",
    objects_header: str = "Objects:",
    decimals: int = 2,
) -> str:
    """The text the LLM reads in place of the image: the captions, one a line, then (``use_boxes``) one
    ``category: [x1, y1, x2, y2]`` line per object."""
    lines = [captions_header, *context.captions] if context.captions else []
    if use_boxes and context.instances:
        lines.append(objects_header)
        lines += [f"{i.category}: [{', '.join(f'{v:.{decimals}f}' for v in i.bbox)}]" for i in context.instances]
    return "\n".join(lines)
