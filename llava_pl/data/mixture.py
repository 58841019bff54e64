"""Several data sources trained as one: each a LLaVA JSON file (over its image folder) or a shard folder, with
a weight that says how many times each of its samples is drawn per epoch (1: once, 0.5: half of them, 2: twice)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from llava_pl.data.conversation import Conversation
from llava_pl.data.dataset import LlavaDataset, ScanResult
from llava_pl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SourceSpec:
    path: str
    image_folder: str | None = None
    weight: float = 1.0
    name: str | None = None
    samples: int | None = None  # the sample count of a streamed URL source (shard folders and files know theirs)


def source_specs(train: str | Sequence[Any], image_folder: str | None) -> list[SourceSpec]:
    """``train`` as a list of sources: a single path, or entries ``{path, image_folder, weight, name, samples}``
    whose ``image_folder`` defaults to the data config's."""
    if isinstance(train, str):
        return [SourceSpec(train, image_folder)]
    specs = []
    for position, entry in enumerate(train):
        entry = dict(entry) if not isinstance(entry, str) else {"path": entry}
        unknown = set(entry) - {"path", "image_folder", "weight", "name", "samples"}
        if unknown or "path" not in entry:
            raise ConfigError(f"data source {position}: expected keys path, image_folder, weight, name, samples; "
                             f"got {sorted(entry)}")
        spec = SourceSpec(str(entry["path"]), entry.get("image_folder", image_folder), float(entry.get("weight", 1.0)),
                          entry.get("name"), entry.get("samples"))
        if spec.weight < 0:
            raise ConfigError(f"data source {position} ({spec.path}): weight must be >= 0, got {spec.weight}")
        specs.append(spec)
    if not specs:
        raise ConfigError("no training data source given")
    return specs


def weighted_indices(good: Sequence[int], weight: float, generator: torch.Generator) -> list[int]:
    """``weight × len(good)`` indices (rounded): every good index ``⌊weight⌋`` times, plus a random part of them
    for the fraction."""
    whole = math.floor(weight)
    extra = round((weight - whole) * len(good))
    chosen = torch.randperm(len(good), generator=generator)[:extra].sort().values.tolist()
    return list(good) * whole + [good[i] for i in chosen]


class MixtureDataset(Dataset):
    """The sources one after another (indices offset by the earlier sources' sizes), with the epoch's index list
    (``epoch_indices``: each source's good samples repeated or subsampled by its weight, drawn once from
    ``seed``) and the token-accurate lengths the samplers group by."""

    def __init__(self, datasets: list[LlavaDataset], specs: list[SourceSpec], scans: list[ScanResult],
                 seed: int) -> None:
        self.datasets = datasets
        self.offsets = np.cumsum([0] + [len(d) for d in datasets])
        self.lengths = np.concatenate([scan.lengths for scan in scans])
        self.has_image = np.concatenate([scan.has_image for scan in scans])
        generator = torch.Generator().manual_seed(seed)
        self.epoch_indices: list[int] = []
        self.plan: dict[str, dict[str, float]] = {}
        for dataset, spec, scan, offset in zip(datasets, specs, scans, self.offsets):
            good = [int(offset) + index for index in scan.good]
            drawn = weighted_indices(good, spec.weight, generator)
            self.epoch_indices += drawn
            name = self._unique(spec.name or dataset.name)
            dataset.name = name
            self.plan[name] = {"records": len(dataset), "bad": len(scan.bad), "weight": spec.weight,
                               "per_epoch": len(drawn)}
        first = datasets[0]
        self.tokenizer, self.template = first.tokenizer, first.template
        self.image_transform, self.image_folder = first.image_transform, first.image_folder

    def _unique(self, name: str) -> str:
        candidate, count = name, 1
        while candidate in self.plan:
            count += 1
            candidate = f"{name}_{count}"
        return candidate

    def log_plan(self) -> None:
        rows = [f"{'source':<32} {'records':>9} {'bad':>7} {'weight':>7} {'per epoch':>10}"]
        rows += [f"{name:<32} {row['records']:>9} {row['bad']:>7} {row['weight']:>7g} {row['per_epoch']:>10}"
                 for name, row in self.plan.items()]
        log.info("training data:\n" + "\n".join(rows))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[LlavaDataset, int]:
        position = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.datasets[position], index - int(self.offsets[position])

    def __getitem__(self, index: int) -> dict[str, Any]:
        dataset, local = self.locate(index)
        return dataset[local]

    def conversation(self, index: int) -> Conversation:
        dataset, local = self.locate(index)
        return dataset.conversation(local)

    def check(self, index: int) -> tuple[int, bool]:
        """``LlavaDataset.check`` of the record: what the length pass refuses raises ``SampleError``."""
        dataset, local = self.locate(index)
        return dataset.check(local)

    def open_image(self, index: int, conversation: Conversation, position: int) -> Image.Image:
        dataset, local = self.locate(index)
        return dataset.open_image(local, conversation, position)

    def image_tensor(self, index: int, conversation: Conversation, position: int) -> torch.Tensor:
        dataset, local = self.locate(index)
        return dataset.image_tensor(local, conversation, position)
