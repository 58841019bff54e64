"""Where LLaVA records and their images come from: a JSON (or JSON Lines) file over an image folder, or the
webdataset shards ``python -m llava_pl.to_wds`` wrote (read by position through their index files).

A source hands out raw records and image bytes; a record or line that does not parse is not an error of the
whole file but of that one sample (``SampleError`` with reason ``malformed``). Shards converted with pre-processed
images (``preprocessing`` in the manifest) hold each image as ``img<N>.npy``: the ``(H, W, 3)`` uint8 pixels that
the image transform normalises, with ``preprocessing.json`` in each sample saying what was done to them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from llava_pl.data.conversation import SampleError
from llava_pl.errors import DataError

MANIFEST = "manifest.json"
PREPROCESSING_MEMBER = "preprocessing.json"  # in each sample with pre-processed images, for streams without manifest


class RecordSource(Protocol):
    name: str
    preprocessing: dict[str, Any] | None  # what was done to stored images (``ImageTransform.preprocessing``)

    def __len__(self) -> int: ...

    def record(self, index: int) -> dict[str, Any]:
        """The raw record at ``index``; ``SampleError`` (malformed) if it does not parse."""
        ...

    def open_image(self, index: int, sample_id: str, position: int, relative: str) -> Image.Image:
        """The ``position``-th image of sample ``index`` (``relative`` is its path in the record), decoded (as
        stored: already padded and resized where the source holds pre-processed images)."""
        ...


def _decode(data: bytes | None, path: Path | None, source: str, sample_id: str, where: str) -> Image.Image:
    """Opens and fully decodes an image, turning every failure into a ``SampleError`` with its reason."""
    try:
        image = Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
        image.load()
        return image
    except FileNotFoundError as error:
        raise SampleError(source, sample_id, f"image file not found: {where}", "missing_image") from error
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError) as error:
        raise SampleError(source, sample_id, f"image does not decode: {where} ({error})", "corrupt_image") from error
    except OSError as error:
        # PIL reports truncated or broken image data as a plain OSError too; an unreadable file fails in open()
        reason = "unreadable_image" if isinstance(error, (PermissionError, IsADirectoryError)) else "corrupt_image"
        what = "image file unreadable" if reason == "unreadable_image" else "image does not decode"
        raise SampleError(source, sample_id, f"{what}: {where} ({error})", reason) from error


class _Unparsed:
    """A JSON Lines line that is not JSON."""

    def __init__(self, line: int, error: json.JSONDecodeError) -> None:
        self.line = line
        self.error = error


class JsonRecords:
    """A LLaVA JSON array or JSON Lines file; image paths relative to ``image_folder``."""

    def __init__(self, path: str | os.PathLike, image_folder: str | os.PathLike | None) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.preprocessing = None
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        if self.image_folder is not None and not self.image_folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_folder} (the folder the image paths of "
                                    f"{self.path} are relative to)")
        text = self.path.read_text(encoding="utf-8")
        if self.path.suffix == ".jsonl":
            self.records: list[Any] = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        self.records.append(_Unparsed(number, error))
        else:
            try:
                self.records = json.loads(text)
            except json.JSONDecodeError as error:  # the whole file is unusable: no sample can be told apart
                raise DataError(f"{self.path}: not valid JSON ({error})") from error
            if not isinstance(self.records, list):
                raise DataError(f"{self.path}: expected a JSON array of LLaVA records")

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if isinstance(record, _Unparsed):
            raise SampleError(self.name, f"line {record.line}", f"not valid JSON ({record.error})")
        return record

    def open_image(self, index: int, sample_id: str, position: int, relative: str) -> Image.Image:
        if self.image_folder is None:
            raise SampleError(self.name, sample_id, f"has image {relative!r} but no image folder is configured",
                              "missing_image")
        path = self.image_folder / relative
        return _decode(None, path, self.name, sample_id, str(path))

    def image_exists(self, relative: str) -> bool:
        return self.image_folder is not None and (self.image_folder / relative).exists()

    def missing_image(self, relative: str) -> str:
        """Why ``image_exists(relative)`` is false, naming the file and the folder."""
        if self.image_folder is None:
            return f"has image {relative!r} but no image folder is configured"
        return f"image file not found: {relative} in image folder {self.image_folder}"


def image_member(position: int, relative: str) -> str:
    """The shard member extension of a sample's ``position``-th image: ``img0.jpg``, ``img1.png``, ..."""
    suffix = Path(relative).suffix.lower().lstrip(".") or "bin"
    return f"img{position}.{suffix}"


def pixels_member(position: int) -> str:
    """The shard member extension of a sample's ``position``-th pre-processed image."""
    return f"img{position}.npy"


def decode_pixels(data: bytes, source: str, sample_id: str, where: str) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 pixels of a pre-processed image member."""
    try:
        pixels = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise SampleError(source, sample_id, f"pixels do not load: {where} ({error})", "corrupt_image") from error
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise SampleError(source, sample_id, f"pixels are not (H, W, 3) uint8: {where} ({pixels.dtype}, "
                          f"{pixels.shape})", "corrupt_image")
    return pixels


class ShardRecords:
    """Shards written by ``llava_pl.to_wds``, read by position through each shard's member index."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.name = str(self.folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no shard manifest (write the shards with llava_pl.to_wds)")
        self.manifest = json.loads(manifest_path.read_text())
        if not self.manifest.get("complete"):
            raise DataError(f"{manifest_path}: the conversion did not finish; run llava_pl.to_wds again")
        self.preprocessing = self.manifest.get("preprocessing")
        # numpy arrays rather than a Python object per sample: no reference counts for forked loader workers to
        # touch, so the pages stay shared, and ~30 bytes per sample
        self.shard_names = [shard["name"] for shard in self.manifest["shards"]]
        shard_of, keys, first, count, exts, offsets, sizes = [], [], [], [], [], [], []
        ext_ids: dict[str, int] = {}
        for number, shard in enumerate(self.manifest["shards"]):
            for key, members in json.loads((self.folder / shard["index"]).read_text()):
                shard_of.append(number)
                keys.append(int(key))
                first.append(len(offsets))
                count.append(len(members))
                for ext, (offset, size) in members.items():
                    exts.append(ext_ids.setdefault(ext, len(ext_ids)))
                    offsets.append(offset)
                    sizes.append(size)
        self.ext_names = list(ext_ids)
        self._shard = np.asarray(shard_of, dtype=np.int32)
        self._key = np.asarray(keys, dtype=np.int64)
        self._first = np.asarray(first, dtype=np.int64)
        self._count = np.asarray(count, dtype=np.int16)
        self._ext = np.asarray(exts, dtype=np.int16)
        self._span = np.stack([np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64)], axis=-1) \
            if offsets else np.zeros((0, 2), dtype=np.int64)
        self._files: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._key)

    def entry(self, index: int) -> tuple[str, str, dict[str, list[int]]]:
        """``(shard file name, sample key, {member extension: [offset, size]})`` of sample ``index``."""
        start, stop = int(self._first[index]), int(self._first[index]) + int(self._count[index])
        members = {self.ext_names[self._ext[i]]: self._span[i].tolist() for i in range(start, stop)}
        return self.shard_names[self._shard[index]], f"{int(self._key[index]):09d}", members

    def __getstate__(self) -> dict[str, Any]:  # open files stay in the process that opened them
        return {**self.__dict__, "_files": {}}

    def _read(self, shard: str, span: list[int]) -> bytes:
        if self._pid != os.getpid():  # a forked loader worker: files opened before share their offsets
            self._files, self._pid = {}, os.getpid()
        file = self._files.get(shard)
        if file is None:
            file = self._files[shard] = (self.folder / shard).open("rb")
        file.seek(span[0])
        return file.read(span[1])

    def record(self, index: int) -> dict[str, Any]:
        shard, key, members = self.entry(index)
        try:
            return json.loads(self._read(shard, members["json"]))
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SampleError(f"{self.folder / shard}", key, f"the sample's json does not parse ({error})") from error

    def _member(self, index: int, sample_id: str, member: str) -> tuple[bytes, str]:
        shard, key, members = self.entry(index)
        where = f"{self.folder / shard}:{key}.{member}"
        if member not in members:
            raise SampleError(self.name, sample_id, f"image member not in the shard: {where}", "missing_image")
        return self._read(shard, members[member]), where

    def open_pixels(self, index: int, sample_id: str, position: int) -> np.ndarray:
        """The ``position``-th pre-processed image of sample ``index`` (shards with ``preprocessing`` only)."""
        data, where = self._member(index, sample_id, pixels_member(position))
        return decode_pixels(data, self.name, sample_id, where)

    def open_image(self, index: int, sample_id: str, position: int, relative: str) -> Image.Image:
        if self.preprocessing is not None:
            return Image.fromarray(self.open_pixels(index, sample_id, position))
        data, where = self._member(index, sample_id, image_member(position, relative))
        return _decode(data, None, self.name, sample_id, where)

    def image_exists(self, relative: str) -> bool:
        return True  # the converter only writes samples whose images it read


def decode_image_bytes(data: bytes, source: str, sample_id: str, where: str) -> Image.Image:
    return _decode(data, None, source, sample_id, where)


def open_source(path: str | os.PathLike, image_folder: str | os.PathLike | None) -> JsonRecords | ShardRecords:
    """Shards when ``path`` is a folder with a manifest, else a JSON/JSON Lines file over ``image_folder``."""
    if Path(path).is_dir():
        return ShardRecords(path)
    return JsonRecords(path, image_folder)
