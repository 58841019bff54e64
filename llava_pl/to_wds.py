"""Converts a LLaVA JSON (or JSON Lines) file and its image folder into webdataset tar shards.

    python -m llava_pl.to_wds in=llava_v1_5_mix665k.json images=/data/llava out=/data/mix665k_shards \\
        shard_size=5000

Each sample is ``<position>.json`` (the record as it is) plus ``<position>.img0.<ext>`` ... (each image's bytes
as stored); text-only samples have the json alone. The key is the record's position in the file, since ids
repeat. ``manifest.json`` lists each shard with its sample count, the source file's SHA-256 and the bad samples
left out; ``<shard>.idx.json`` gives each member's byte span, so shards can also be read by position.

Shard ``k`` always holds records ``k·shard_size`` to ``(k+1)·shard_size - 1``: an interrupted conversion run
again with the same arguments keeps the finished shards and writes only the rest.

``vision=PRESET`` (a name in ``conf/model/vision``, plus any ``model.vision.*`` overrides) stores each image
pre-processed for that encoder instead: ``img0.npy``, the ``(H, W, 3)`` uint8 pixels the run's image transform
would compute before rescaling and normalising (with ``pad`` padded to a square in LLaVA's fill colour, then
resized and cropped as its processor does), so that training only normalises them. ``image_aspect=pad|crop|resize``
(default ``pad``) is the image aspect of the stage that will read the shards (LLaVA-1.5: ``crop`` for align,
``pad`` for finetune). The manifest's ``preprocessing`` and each such sample's ``preprocessing.json`` say what was
done; a run whose image transform differs stops with an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from llava_pl.cli import answer_help, boolean, choice, main_argv, parse_key_values
from llava_pl.data.bad_samples import REASONS, OnBadSample, check_policy
from llava_pl.data.conversation import SampleError, parse_record
from llava_pl.data.images import ImageAspect, ImageTransform
from llava_pl.data.records import (MANIFEST, PREPROCESSING_MEMBER, JsonRecords, decode_image_bytes, image_member,
                                   pixels_member)
from llava_pl.errors import ConfigError, DataError, UsageError, reports_user_errors

USAGE = ("python -m llava_pl.to_wds in=FILE.json images=DIR out=DIR [shard_size=1000] [on_bad_sample=skip|error]"
         " [vision=PRESET [image_aspect=pad|crop|resize] [model.vision.KEY=VALUE ...]]")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(partial, path)


def _check_decodes(data: bytes, source: str, sample_id: str, where: str) -> None:
    """Raises the ``SampleError`` of image bytes that do not decode. JPEGs are decoded at 1/8 scale, which still
    reads every byte (a truncated file fails) at a fraction of the cost."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format == "JPEG":
                opened.draft("RGB", (max(1, opened.width // 8), max(1, opened.height // 8)))
            opened.load()
    except (OSError, SyntaxError, ValueError, EOFError):
        decode_image_bytes(data, source, sample_id, where)  # decodes in full: raises the error with its reason


def _read_image(folder: Path | None, relative: str, source: str, sample_id: str) -> tuple[bytes, str]:
    if folder is None:
        raise SampleError(source, sample_id, f"has image {relative!r} but no images= folder was given",
                          "missing_image")
    path = folder / relative
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise SampleError(source, sample_id, f"image file not found: {path}", "missing_image") from error
    except OSError as error:
        raise SampleError(source, sample_id, f"image file unreadable: {path} ({error})", "unreadable_image") from error
    return data, str(path)


def _stored(data: bytes, where: str, number: int, relative: str, transform: ImageTransform | None, source: str,
            sample_id: str) -> tuple[str, bytes]:
    """``(member extension, bytes)`` of a sample's ``number``-th image: its bytes as read, or with ``transform``
    its pre-processed pixels as ``.npy``."""
    if transform is None:
        _check_decodes(data, source, sample_id, where)
        return image_member(number, relative), data
    with decode_image_bytes(data, source, sample_id, where) as image:
        pixels = transform.pixels(image)
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    return pixels_member(number), buffer.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def _index(shard: Path) -> list[list[Any]]:
    """``[[key, {ext: [offset, size]}], ...]`` in the order of the shard."""
    entries: dict[str, dict[str, list[int]]] = {}
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            entries.setdefault(key, {})[ext] = [member.offset_data, member.size]
    return [[key, members] for key, members in entries.items()]


def write_shard(source: JsonRecords, folder: Path | None, start: int, stop: int, path: Path,
                policy: OnBadSample, progress: tqdm | None = None,
                transform: ImageTransform | None = None) -> list[list[Any]]:
    """Writes records ``start..stop-1`` to ``path`` (complete or absent); returns the bad ones
    ``[[position, id, reason, message], ...]`` (``policy="error"``: raises the first). With ``transform`` the
    images are stored pre-processed by it."""
    made_for = json.dumps(transform.preprocessing()).encode() if transform is not None else None
    bad: list[list[Any]] = []
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for position in range(start, stop):
            if progress is not None:
                progress.update(1)
            try:
                record = source.record(position)
                conversation = parse_record(record, source.name, position)
                images = [_stored(*_read_image(folder, relative, source.name, conversation.sample_id), number,
                                  relative, transform, source.name, conversation.sample_id)
                          for number, relative in enumerate(conversation.images)]
            except SampleError as error:
                if policy == "error":
                    raise
                bad.append([position, error.sample_id, error.reason, str(error)])
                continue
            key = f"{position:09d}"
            _member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
            for member, data in images:
                _member(tar, f"{key}.{member}", data)
            if images and made_for is not None:
                _member(tar, f"{key}.{PREPROCESSING_MEMBER}", made_for)
    os.replace(partial, path)
    return bad


def convert(input_file: str | os.PathLike, images: str | os.PathLike | None, out: str | os.PathLike,
            shard_size: int = 1000, on_bad_sample: OnBadSample = "skip", progress: bool = True,
            transform: ImageTransform | None = None) -> dict[str, Any]:
    """Writes (or finishes writing) the shards of ``input_file`` into ``out``; returns the manifest. With
    ``transform`` (``vision_transform``, or the run's own) the images are stored pre-processed for it."""
    policy = check_policy(on_bad_sample)
    if shard_size < 1:
        raise ConfigError(f"shard_size must be positive, got {shard_size}")
    try:
        preprocessing = transform.require_exact() if transform is not None else None
    except ValueError as error:
        raise ConfigError(f"{error}; convert without vision=") from None
    input_path, out_dir = Path(input_file), Path(out)
    source = JsonRecords(input_path, images)
    folder = Path(images) if images is not None else None
    digest = file_sha256(input_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    fresh = {"source": str(input_path), "source_sha256": digest, "image_folder": str(folder) if folder else None,
             "shard_size": shard_size, "preprocessing": preprocessing, "records": len(source), "shards": [],
             "complete": False}
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else fresh
    same = (manifest["source_sha256"], manifest["shard_size"], manifest.get("preprocessing"))
    if same != (digest, shard_size, preprocessing):
        raise DataError(f"{out_dir} holds shards of another conversion (source {manifest['source']}, "
                         f"shard_size {manifest['shard_size']}, preprocessing {manifest.get('preprocessing')}); "
                         "choose an empty folder")
    done = {shard["name"] for shard in manifest["shards"]}
    count = -(-len(source) // shard_size)
    bar = tqdm(total=len(source), initial=min(len(done) * shard_size, len(source)), unit="sample",
               desc=f"{input_path.name} → {out_dir}", disable=not progress)
    try:
        for number in range(count):
            name = f"{input_path.stem}-{number:06d}.tar"
            if name in done:
                continue
            start, stop = number * shard_size, min((number + 1) * shard_size, len(source))
            bad = write_shard(source, folder, start, stop, out_dir / name, policy, bar, transform)
            index_name = f"{name}.idx.json"
            index = _index(out_dir / name)
            _write_json(out_dir / index_name, index)
            manifest["shards"].append({"name": name, "index": index_name, "samples": len(index),
                                       "records": [start, stop], "bad": bad})
            manifest["shards"].sort(key=lambda shard: shard["name"])
            _write_json(manifest_path, manifest)  # after the shard: a crash never lists a partial shard
    finally:
        bar.close()
    reasons = Counter(entry[2] for shard in manifest["shards"] for entry in shard["bad"])
    manifest.update(complete=True, samples=sum(shard["samples"] for shard in manifest["shards"]),
                    bad_samples={reason: reasons[reason] for reason in REASONS if reasons[reason]})
    _write_json(manifest_path, manifest)
    return manifest


def report(manifest: dict[str, Any]) -> str:
    lines = [f"{manifest['samples']} of {manifest['records']} records in {len(manifest['shards'])} shard(s)"]
    if manifest.get("preprocessing"):
        lines.append(f"images pre-processed for {manifest['preprocessing']}")
    bad = [entry for shard in manifest["shards"] for entry in shard["bad"]]
    if bad:
        lines.append(f"{len(bad)} bad sample(s) left out:")
        lines += [f"  {reason:<17} {count}" for reason, count in manifest["bad_samples"].items()]
        lines += [f"  e.g. {entry[3]}" for entry in bad[:10]]
    return "\n".join(lines)


def vision_transform(preset: str, image_aspect: ImageAspect = "pad", overrides: Sequence[str] = ()) -> ImageTransform:
    """The image transform of a run with ``model/vision=preset`` (and ``model.vision.*`` ``overrides``) in a
    stage with ``image_aspect``. The tower is built on the meta device and the image processor from the preset's own
    values or the config the package carries for it: nothing is downloaded for the presets llava_pl carries."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from hydra.utils import instantiate

    from llava_pl.config_dir import CONF_DIR
    from llava_pl.model.architecture import architecture_only

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(f"model/vision/{preset}", overrides=list(overrides))
    except MissingConfigException as error:
        names = sorted(path.stem for path in (CONF_DIR / "model" / "vision").glob("*.yaml"))
        raise ConfigError(f"no vision preset {preset!r}; conf/model/vision has {', '.join(names)}") from error
    with architecture_only():
        encoder = instantiate(cfg.model.vision)
    return ImageTransform(encoder.image_processor, image_aspect)


KEYS = {"in": str, "images": str, "out": str, "shard_size": int, "on_bad_sample": choice("skip", "error"),
        "progress": boolean, "vision": str, "image_aspect": choice("pad", "crop", "resize")}


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``(options, model.vision.* overrides)``; ``UsageError`` for anything else."""
    answer_help(argv, __doc__ + f"\nusage: {USAGE}")
    args, overrides = parse_key_values(argv, KEYS, USAGE, required=("in", "out"),
                                       passthrough=lambda key: key.startswith("model.vision."))
    if "vision" not in args and ({"image_aspect"} & set(args) or overrides):
        raise UsageError(f"image_aspect= and model.vision.* need vision=\nusage: {USAGE}")
    return args, overrides


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(main_argv(argv))
    transform = vision_transform(args["vision"], args.get("image_aspect", "pad"), overrides) \
        if "vision" in args else None
    manifest = convert(args["in"], args.get("images"), args["out"], args.get("shard_size", 1000),
                       args.get("on_bad_sample", "skip"), args.get("progress", True), transform)
    print(report(manifest))
    if not manifest["samples"]:
        raise DataError(f"no record of {args['in']} converted ({manifest['records']} records): "
                        + ("check images= and the bad samples above" if manifest["records"] else "the file is empty"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
