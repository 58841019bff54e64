"""Data loading throughput: samples per second of one loader worker (one process, one core) at 336 px with
LLaVA-1.5's pad-to-square, from a JSON file over an image folder and from webdataset shards (read by position
and streamed; holding the JPEGs, or the images pre-resized at conversion), on synthetic COCO-sized JPEGs and
LLaVA-Instruct-like conversations.

    nice python -m bench.data [samples=400] [write=true]

from the checkout, with llava_pl installed. The figures go into BENCHMARKS.md under "## Data loading" (the
section is replaced, the rest kept).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch and numpy start their thread pools

import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from bench.data_samples import make_data  # noqa: E402
from bench.data_timing import (  # noqa: E402
    SIZE,
    TOKENS_PER_IMAGE,
    breakdown,
    clip_processor,
    connect,
    conversion,
    rate,
    storage_formats,
)
from llava_pl.data.datamodule import LlavaDataModule  # noqa: E402
from llava_pl.data.images import ImageTransform  # noqa: E402
from llava_pl.data.wds import WdsDataModule  # noqa: E402
from llava_pl.demo.tokenizer import build_demo_tokenizer  # noqa: E402
from llava_pl.model.llm import load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = old.find("## Data loading")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[:start] + text.rstrip("\n") + "\n\n" + (old[end + 1:] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str]) -> None:
    args = dict(argument.split("=", 1) for argument in argv)
    samples = int(args.get("samples", 400))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = make_data(folder, samples)
        tokenizer = load_tokenizer(str(build_demo_tokenizer(folder / "tokenizer", folder / "corpus.txt")))
        converted = {"JPEGs as they are": conversion(source, folder / "shards", None),
                     f"pre-resized to {SIZE} px (.npy)": conversion(source, folder / "resized",
                                                                      ImageTransform(clip_processor()))}
        kinds = {
            "JSON + image folder": LlavaDataModule(str(source), str(folder / "images"), micro_batch_size=BATCH,
                                                   num_workers=0, max_length=2048),
            "shards, read by position": LlavaDataModule(str(folder / "shards"), None, micro_batch_size=BATCH,
                                                        num_workers=0, max_length=2048),
            "shards, streamed (data=wds)": WdsDataModule(str(folder / "shards"), None, micro_batch_size=BATCH,
                                                         num_workers=0, max_length=2048, shuffle_buffer=100,
                                                         samples_per_epoch=samples),
            "shards, pre-resized at conversion, read by position": LlavaDataModule(
                str(folder / "resized"), None, micro_batch_size=BATCH, num_workers=0, max_length=2048),
            "shards, pre-resized at conversion, streamed": WdsDataModule(
                str(folder / "resized"), None, micro_batch_size=BATCH, num_workers=0, max_length=2048,
                shuffle_buffer=100, samples_per_epoch=samples),
        }
        reference = LlavaDataModule(str(source), str(folder / "images"), micro_batch_size=BATCH, num_workers=0,
                                    max_length=2048)
        connect(reference, tokenizer)
        reference._connection["image_transform"].fast = None  # the image processor's own code
        kinds["JSON + image folder, image processor's own code"] = reference
        results = {}
        for name, module in kinds.items():
            if module is not reference:
                connect(module, tokenizer)
            results[name] = rate(module, samples)
            print(f"{name:<55} {results[name][0]:7.1f} samples/s, {results[name][1]:7.1f} per CPU second")
        image_bytes = sum(p.stat().st_size for p in (folder / "images").iterdir()) / samples
        parts = breakdown(kinds["JSON + image folder"])
        resized_parts = breakdown(kinds["shards, pre-resized at conversion, read by position"])
        formats = storage_formats(kinds["shards, pre-resized at conversion, read by position"])
    rows = "\n".join(f"| {name} | {cpu:.0f} | {wall:.0f} |" for name, (wall, cpu) in results.items())
    steps = "\n".join(f"| {name} | {value:.1f} | {resized_name} | {resized:.1f} |"
                      for (name, value), (resized_name, resized) in zip(parts.items(), resized_parts.items()))
    conversions = "\n".join(f"| {name} | {cpu:.1f} | {size:.0f} |" for name, (cpu, size) in converted.items())
    stored = "\n".join(f"| {name} | {size:.0f} | {read:.2f} |" for name, (size, read) in formats.items())
    ratio = results["JSON + image folder"][1] / results["JSON + image folder, image processor's own code"][1]
    growth = converted[f"pre-resized to {SIZE} px (.npy)"][1] / converted["JPEGs as they are"][1]
    print(steps)
    print(conversions)
    print(stored)
    load = os.getloadavg()[0]
    best = max(cpu for name, (_, cpu) in results.items() if "pre-resized" not in name)
    resized = min(cpu for name, (_, cpu) in results.items() if "pre-resized" in name)
    verdict = ("reached" if resized >= 150 else "not reached") + f" on this machine: {resized:.0f} samples per " \
        f"CPU second from pre-resized shards (the slower of their two readers), {best:.0f} at best from JPEGs"
    text = f"""## Data loading

`nice python -m bench.data samples={samples}` on {platform.machine()} ({os.cpu_count()} cores, load average
{load:.1f} at the end of the run; the loop runs in one process with one thread, i.e. what one `data.num_workers` worker delivers: samples per
CPU second of that process is what one core of this machine delivers, the wall-clock rate what it delivered
while sharing them). Samples:
LLaVA-Instruct-like conversations (1–5 turns, `<image>` before or after the prompt) over synthetic COCO-sized
JPEGs (640 × 480 or 480 × 640, {image_bytes / 1024:.0f} KiB on average); each sample is decoded, padded to a
square with the mean colour, resized and normalised to {SIZE} × {SIZE} by CLIP's image processor, rendered with
the ChatML template, tokenized with the image expanded to {TOKENS_PER_IMAGE} positions, and collated into
micro-batches of {BATCH}. Measured {time.strftime('%Y-%m-%d')}, best of two passes.

| source | samples per CPU second (one core) | samples/s, wall clock, shared cores |
|---|---|---|
{rows}

CPU time per sample of each step (first 100 samples; JSON + image folder, and shards pre-resized at conversion):

| step | CPU ms per sample | step, pre-resized | CPU ms per sample |
|---|---|---|---|
{steps}

The resize of the padded 640 × 640 image to 336 × 336 (PIL's bicubic filter, which CLIP's processor uses) is the
largest single cost of the JPEG path; shards converted with `vision=` (`python -m llava_pl.to_wds ...
vision=clip-vit-l-14-336`) hold each image already padded, resized and cropped, as {SIZE} × {SIZE} × 3 uint8
`.npy`, so a worker only reads and normalises them, with the very same pixel tensors. The conversion pays the
resize once instead:

| shards holding | conversion CPU ms per sample | KiB of shards per sample |
|---|---|---|
{conversions}

The pixels take {growth:.1f}× these JPEGs' room ({SIZE} × {SIZE} × 3 bytes whatever the photo; COCO's own JPEGs
average about 155 KiB, about half of it). Lossless PNG takes less room but costs more CPU to read back (compare
"read + decode" of the JPEGs above; first 40 images):

| pixels stored as | KiB per image | CPU ms to read back into an array |
|---|---|---|
{stored}

The target of 150 samples/s per worker on one core was {verdict}; a
busy machine slows even the CPU time of a process, so figures measured under load are a lower bound. Without the
image work what remains is mostly the template and tokenizer, and for the stream reading each tar member in
Python and the shuffle buffer. The three JPEG sources differ by less than this machine's run-to-run noise
(another run ordered them the other way); the cheaper image path is worth {ratio:.1f}× against the image
processor's own code in the same process. For scale: LLaVA-1.5 reports about one day on one 8-GPU node for both stages of
its 13B model (558K + 665K samples), about 2 samples/s per GPU on average, so `data.num_workers: 4` per GPU leaves
a wide margin even at these rates.
"""
    print(text)
    if args.get("write", "true") != "false":
        write_section(text)


if __name__ == "__main__":
    main(sys.argv[1:])
