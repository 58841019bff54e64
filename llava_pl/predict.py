"""Answer questions about images with a trained model.

    python -m llava_pl.predict model=PATH image=IMG prompt="What is in the image?"
    python -m llava_pl.predict model=PATH questions=FILE.json image_folder=DIR out=answers.json

PATH is a Lightning checkpoint written by llava_pl or an exported Hugging Face Llava folder. A questions
file is a JSON array (or JSON Lines) of ``{"question_id", "image", "text"}``; the answers file repeats each
record with an ``answer`` field. Greedy by default; ``do_sample=true temperature=0.7 top_p=0.9`` samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image

from llava_pl.checkpoint import load_for_inference
from llava_pl.data.dataset import read_records
from llava_pl.generate import Answerer

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "num_beams")


def predict(args: dict[str, Any]) -> list[dict[str, Any]]:
    loaded = load_for_inference(args["model"])
    sampling = {key: args[key] for key in SAMPLING_KEYS if key in args}
    answer = Answerer(
        loaded.model, loaded.tokenizer, loaded.template,
        max_new_tokens=int(args.get("max_new_tokens", 128)), batch_size=int(args.get("batch_size", 16)), **sampling,
    )
    if "questions" in args:
        records = read_records(args["questions"])
        folder = Path(args.get("image_folder", "."))
    elif "image" in args and "prompt" in args:
        records = [{"question_id": "0", "image": args["image"], "text": str(args["prompt"])}]
        folder = Path(".")
    else:
        raise SystemExit(__doc__)
    images = []
    for record in records:
        with Image.open(folder / record["image"]) as image:
            images.append(loaded.image_transform(image))
    answers = answer([record["text"] for record in records], images)
    return [{**record, "answer": text} for record, text in zip(records, answers)]


def main() -> None:
    args = OmegaConf.to_container(OmegaConf.from_cli())
    if "model" not in args:
        raise SystemExit(__doc__)
    results = predict(args)
    if "out" in args:
        Path(args["out"]).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"{len(results)} answers written to {args['out']}")
    else:
        for row in results:
            print(row["answer"])


if __name__ == "__main__":
    main()
