"""A Hugging Face checkpoint's weight files, read one tensor (or part of one) at a time, and which of their keys
holds each weight of a model.

Safetensors files are read through ``safe_open``, PyTorch ``.bin`` files (zip format) through
``torch.load(mmap=True)``: both map the file, so a slice touches only its own pages. Each read opens the file
anew, so that the pages it touched leave with it. The keys are matched as ``from_pretrained`` matches them
(transformers' own renaming rules: legacy names, a base model's prefix added or removed), so a vision tower
reads the vision half of a CLIP or SigLIP checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from transformers.utils.hub import cached_file, get_checkpoint_shard_files

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class StoredTensor(Protocol):
    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index: tuple[slice, ...] | slice) -> torch.Tensor: ...


def weight_files(name_or_path: str) -> list[Path] | None:
    """The weight files of a local folder or a hub model (downloaded as ``from_pretrained`` would), safetensors
    first as it prefers them: one file or the shards its index names; None when there are neither (GGUF)."""
    for index_name, single_name in ((SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME), (WEIGHTS_INDEX_NAME, WEIGHTS_NAME)):
        folder = Path(name_or_path)
        if folder.is_dir():
            index, single = folder / index_name, folder / single_name
            if index.is_file():
                return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
            if single.is_file():
                return [single]
            continue
        options = {"_raise_exceptions_for_missing_entries": False, "_raise_exceptions_for_connection_errors": False}
        index_file = cached_file(name_or_path, index_name, **options)
        if index_file is not None:
            return [Path(file) for file in get_checkpoint_shard_files(name_or_path, index_file)[0]]
        single_file = cached_file(name_or_path, single_name, **options)
        if single_file is not None:
            return [Path(single_file)]
    return None


@contextmanager
def stored_tensors(file: Path) -> Iterator[StoredFile]:
    """The file's tensors by key, not yet read: indexing one reads that part of it. Copy what is read before
    the file closes: a read tensor may still be a view of the mapped file."""
    if file.suffix == ".safetensors":
        with safe_open(str(file), "pt") as handle:
            yield handle
    else:
        yield _MappedFile(torch.load(file, map_location="cpu", mmap=True, weights_only=True))


class StoredFile(Protocol):
    def keys(self) -> Iterable[str]: ...

    def get_slice(self, key: str) -> StoredTensor: ...


class _MappedFile:
    """A ``.bin`` file's memory-mapped state dict, read like a safetensors file."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def keys(self) -> Iterable[str]:
        return self.state.keys()

    def get_slice(self, key: str) -> _MappedTensor:
        return _MappedTensor(self.state[key])


class _MappedTensor:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index: tuple[slice, ...] | slice) -> torch.Tensor:
        return self.tensor[index]


def floating_dtype(file: Path) -> torch.dtype | None:
    """The dtype of the file's first floating-point tensor (what ``from_pretrained``'s ``dtype="auto"`` takes
    when the config names none)."""
    with stored_tensors(file) as handle:
        for key in handle.keys():
            stored = handle.get_slice(key)
            dtype = (stored.tensor.dtype if isinstance(stored, _MappedTensor)
                     else _SAFETENSORS_DTYPES.get(stored.get_dtype(), torch.int64))
            if dtype.is_floating_point:
                return dtype
    return None


def checkpoint_key_mapping(model: PreTrainedModel, checkpoint_keys: Iterable[str]) -> dict[str, str] | None:
    """``{model key: checkpoint key}`` for the model's state-dict keys found in the checkpoint (keys of other
    parts, e.g. a CLIP checkpoint's text tower, are left out); None when a key needs a conversion beyond
    renaming (fused or split tensors), which cannot be read one shard at a time."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [transform for transform in transforms if isinstance(transform, WeightRenaming)]
    converters = [transform for transform in transforms if isinstance(transform, WeightConverter)]
    expected = model.state_dict()
    mapping: dict[str, str] = {}
    for key in checkpoint_keys:
        renamed, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
        if converted is not None:
            return None
        if renamed in expected:
            mapping[renamed] = key
    return mapping
