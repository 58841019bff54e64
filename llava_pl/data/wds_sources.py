"""The sources of a stream (``data=wds``): what each one is read as, a list of units, and its size when known.

A source is a sequence of units read in order: a shard, or for a JSON file a run of ``shard_size`` records
(the records ``llava_pl.to_wds`` puts in one shard).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from llava_pl.data.mixture import SourceSpec
from llava_pl.data.records import MANIFEST, JsonRecords

Unit = tuple[str, Any]  # ("shard", url) or ("records", (start, stop))


@dataclass
class StreamSource:
    """One source of a stream: its units, its mixing weight and its size when known."""

    name: str
    weight: float
    units: list[Unit]
    size: int | None
    records: JsonRecords | None = None
    preprocessing: dict[str, Any] | None = None  # a shard folder's, from its manifest
    folder: str | None = None  # a shard folder's path


def stream_source(spec: SourceSpec, shard_size: int = 1000) -> StreamSource:
    """Shards: a folder with a manifest, a ``.tar`` path or URL (brace patterns expand), a ``pipe:`` command;
    otherwise a JSON/JSON Lines file over ``spec.image_folder``."""
    path = spec.path
    folder = Path(path)
    if folder.is_dir() and (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text())
        units = [("shard", str(folder / shard["name"])) for shard in manifest["shards"]]
        return StreamSource(spec.name or folder.name, spec.weight, units, manifest.get("samples"),
                            preprocessing=manifest.get("preprocessing"), folder=str(folder))
    if path.startswith("pipe:") or ".tar" in path or "://" in path:
        return StreamSource(spec.name or Path(path.split()[-1] if path.startswith("pipe:") else path).stem,
                            spec.weight, [("shard", url) for url in braceexpand(path)], spec.samples)
    records = JsonRecords(path, spec.image_folder)
    units = [("records", (start, min(start + shard_size, len(records))))
             for start in range(0, len(records), shard_size)]
    return StreamSource(spec.name or folder.name, spec.weight, units, len(records), records)
