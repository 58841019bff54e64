"""What ``bench.data`` measures: one loader's samples per second, each loading step's CPU time, the cost of
converting to shards and of the formats pre-resized pixels can be stored in."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor

from llava_pl.data.images import ImageTransform
from llava_pl.data.templates import ChatTemplate
from llava_pl.to_wds import convert

SIZE = 336
TOKENS_PER_IMAGE = 576


def clip_processor() -> CLIPImageProcessor:
    """CLIP ViT-L/14-336's image processor."""
    return CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                              image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711])


def connect(module, tokenizer) -> None:
    """Gives a data module what the trainer would: tokenizer, ChatML template, processor, image tokens."""
    module.connect(tokenizer, ChatTemplate(), clip_processor(), TOKENS_PER_IMAGE)


def conversion(source: Path, out: Path, transform: ImageTransform | None) -> tuple[float, float]:
    """``(CPU ms, KiB of shards)`` per sample of converting ``source`` into ``out``."""
    start = time.process_time()
    manifest = convert(source, source.parent / "images", out, shard_size=100, progress=False, transform=transform)
    cpu = time.process_time() - start
    size = sum(path.stat().st_size for path in out.glob("*.tar"))
    return 1000 * cpu / manifest["samples"], size / 1024 / manifest["samples"]


def rate(module, samples: int, repeats: int = 2) -> tuple[float, float]:
    """Best samples per wall-clock second and per CPU second of this process over ``repeats`` passes of
    ``samples`` samples, loaded in this process (no loader workers, one thread)."""
    module.setup("fit")
    wall = cpu = 0.0
    for _ in range(repeats):
        seen, start, start_cpu = 0, time.perf_counter(), time.process_time()
        for batch in module.train_dataloader():
            seen += len(batch["sample_ids"])
            if seen >= samples:
                break
        wall = max(wall, seen / (time.perf_counter() - start))
        cpu = max(cpu, seen / (time.process_time() - start_cpu))
    return wall, cpu


STEPS = {False: ("read + decode", "pad + resize + normalise", "template + tokenize"),
         True: ("read the pixels (.npy)", "normalise", "template + tokenize")}


def breakdown(module, count: int = 100) -> dict[str, float]:
    """CPU milliseconds per sample of each step, over the first ``count`` samples."""
    dataset = module.train_set.datasets[0]
    transform = dataset.image_transform
    preprocessed = dataset.source.preprocessing is not None
    read, process, tokenize = STEPS[preprocessed]
    times = dict.fromkeys((read, process, tokenize), 0.0)
    count = min(count, len(dataset))
    for index in range(count):
        start = time.process_time()
        conversation = dataset.conversation(index)
        dataset.encoder(conversation, dataset.path)
        encoded = time.process_time()
        if preprocessed:
            pixels = dataset.source.open_pixels(index, conversation.sample_id, 0)
            decoded = time.process_time()
            transform.normalise(pixels)
        else:
            with dataset.open_image(index, conversation, 0) as image:
                decoded = time.process_time()
                transform(image)
        done = time.process_time()
        times[tokenize] += encoded - start
        times[read] += decoded - encoded
        times[process] += done - decoded
    return {name: 1000 * value / count for name, value in times.items()}


def _png(pixels: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def _npy(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    return buffer.getvalue()


def _read_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def storage_formats(module, count: int = 40) -> dict[str, tuple[float, float]]:
    """``{format: (KiB per image, CPU ms to read it back into an array)}`` of the first ``count`` pre-resized
    images, as stored (``.npy``) and as lossless PNG."""
    dataset = module.train_set.datasets[0]
    arrays = [dataset.source.open_pixels(index, "", 0) for index in range(min(count, len(dataset)))]
    formats = {".npy (stored)": (_npy, lambda data: np.load(io.BytesIO(data)))}
    formats.update({f"PNG, compress_level={level}": (lambda pixels, level=level: _png(pixels, level), _read_png)
                    for level in (1, 6)})
    result = {}
    for name, (encode, decode) in formats.items():
        blobs = [encode(pixels) for pixels in arrays]
        assert all(np.array_equal(decode(blob), pixels) for blob, pixels in zip(blobs, arrays))  # lossless
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for blob in blobs:
                decode(blob)
            best = min(best, time.process_time() - start)
        result[name] = (sum(map(len, blobs)) / len(blobs) / 1024, 1000 * best / len(blobs))
    return result
