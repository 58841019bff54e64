"""COCO annotation files → the context records ``make_instruct`` reads (LLaVA's ``caps_boxes`` layout).

    python -m llava_pl.data.instruct.coco captions=captions_train2017.json instances=instances_train2017.json \\
        out=coco_train2017_context.jsonl

One line per image that has captions: ``{"id", "image", "captions", "instances"}``, with each COCO box
``[x, y, width, height]`` in pixels turned into ``[x1, y1, x2, y2]`` fractions of the image's size (3 decimals,
as in LLaVA's files). ``id`` is the file name's stem, ``image`` the file name.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llava_pl.checkpoint.atomic import atomic_path


def _load(path: str | os.PathLike, *keys: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO annotation file, no {missing}")
    return data


def normalised_box(bbox: list[float], width: float, height: float, where: str) -> list[float]:
    """COCO's pixel ``[x, y, w, h]`` as ``[x1, y1, x2, y2]`` in [0, 1], clipped to the image."""
    if len(bbox) != 4 or width <= 0 or height <= 0:
        raise ValueError(f"{where}: bbox {bbox} of an image {width} x {height} cannot be normalised")
    x, y, w, h = bbox
    corners = [x / width, y / height, (x + w) / width, (y + h) / height]
    return [round(min(1.0, max(0.0, v)), 3) for v in corners]


def coco_contexts(captions: str | os.PathLike, instances: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Context records of the images with captions, in the order of the captions file's ``images``."""
    caption_data = _load(captions, "images", "annotations")
    by_image: dict[int, list[str]] = defaultdict(list)
    for annotation in caption_data["annotations"]:
        by_image[annotation["image_id"]].append(" ".join(str(annotation["caption"]).split()))
    boxes: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if instances is not None:
        instance_data = _load(instances, "images", "annotations", "categories")
        names = {category["id"]: category["name"] for category in instance_data["categories"]}
        sizes = {image["id"]: (image["width"], image["height"]) for image in instance_data["images"]}
        for annotation in instance_data["annotations"]:
            image_id = annotation["image_id"]
            where = f"{instances}: annotation {annotation.get('id')} (image {image_id})"
            if image_id not in sizes:
                raise ValueError(f"{where}: the image is not listed in 'images'")
            boxes[image_id].append({"category": names[annotation["category_id"]],
                                    "bbox": normalised_box(annotation["bbox"], *sizes[image_id], where)})
    records = []
    for image in caption_data["images"]:
        if not by_image.get(image["id"]):
            continue
        file_name = image["file_name"]
        records.append({"id": Path(file_name).stem, "image": file_name, "captions": by_image[image["id"]],
                        "instances": boxes.get(image["id"], [])})
    return records


def main() -> None:
    args = OmegaConf.to_container(OmegaConf.from_cli())
    if "captions" not in args or "out" not in args:
        raise SystemExit(__doc__)
    records = coco_contexts(args["captions"], args.get("instances"))
    with atomic_path(args["out"]) as partial:
        partial.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    print(f"{len(records)} images written to {args['out']}")


if __name__ == "__main__":
    main()
