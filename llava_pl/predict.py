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

from PIL import Image

from llava_pl.cli import answer_help, boolean, main_argv, parse_key_values
from llava_pl.errors import UsageError, reports_user_errors

USAGE = ("python -m llava_pl.predict model=PATH (image=IMG prompt=TEXT | questions=FILE [image_folder=DIR]) "
         "[out=FILE] [max_new_tokens=128] [batch_size=16] [do_sample=false] [temperature=T] [top_p=P] [top_k=K] "
         "[num_beams=N]")
SAMPLING_KEYS = {"do_sample": boolean, "temperature": float, "top_p": float, "top_k": int, "num_beams": int}
KEYS = {"model": str, "image": str, "prompt": str, "questions": str, "image_folder": str, "out": str,
        "max_new_tokens": int, "batch_size": int, **SAMPLING_KEYS}


def read_questions(args: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    """The records to answer and their image folder, checked before any model is loaded."""
    from llava_pl.data.dataset import read_records

    if "questions" in args:
        if "image" in args or "prompt" in args:
            raise UsageError(f"questions= or image= with prompt=, not both\nusage: {USAGE}")
        records, folder = read_records(args["questions"]), Path(args.get("image_folder", "."))
    elif "image" in args and "prompt" in args:
        records, folder = [{"question_id": "0", "image": args["image"], "text": args["prompt"]}], Path(".")
    else:
        raise UsageError(f"give questions=FILE, or image=IMG and prompt=TEXT\nusage: {USAGE}")
    if "questions" not in args:
        if not Path(args["image"]).is_file():
            raise FileNotFoundError(f"image file not found: {args['image']}")
        return records, folder
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    for number, record in enumerate(records):
        if not (folder / str(record.get("image", ""))).is_file():
            raise FileNotFoundError(f"{args['questions']}: question {record.get('question_id', number)}: image file "
                                    f"not found: {record.get('image')} in image folder {folder}")
    return records, folder


def predict(args: dict[str, Any]) -> list[dict[str, Any]]:
    from llava_pl.checkpoint.load import load_for_inference
    from llava_pl.generate import Answerer

    records, folder = read_questions(args)
    loaded = load_for_inference(args["model"])
    sampling = {key: args[key] for key in SAMPLING_KEYS if key in args}
    answer = Answerer(
        loaded.model, loaded.tokenizer, loaded.template,
        max_new_tokens=args.get("max_new_tokens", 128), batch_size=args.get("batch_size", 16), **sampling,
    )
    images = []
    for record in records:
        with Image.open(folder / record["image"]) as image:
            images.append(loaded.image_transform(image))
    answers = answer([str(record["text"]) for record in records], images)
    return [{**record, "answer": text} for record, text in zip(records, answers)]


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    argv = main_argv(argv)
    answer_help(argv, __doc__ + f"\nusage: {USAGE}")
    args, _ = parse_key_values(argv, KEYS, USAGE, required=("model",))
    results = predict(args)
    if "out" in args:
        Path(args["out"]).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"{len(results)} answers written to {args['out']}")
    else:
        for row in results:
            print(row["answer"])


if __name__ == "__main__":
    main()
