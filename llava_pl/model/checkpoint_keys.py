"""Where a Hugging Face checkpoint's safetensors files are, and which of their keys holds each weight of a model.

The keys are matched as ``from_pretrained`` matches them (transformers' own renaming rules: legacy names, a base
model's prefix added or removed), so a vision tower reads the vision half of a CLIP or SigLIP checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import cached_file, get_checkpoint_shard_files


def safetensors_files(name_or_path: str) -> list[Path] | None:
    """The safetensors files of a local folder or a hub model (downloaded as ``from_pretrained`` would), one or
    the shards its index names; None when it has none (``.bin`` or GGUF weights)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        index = folder / SAFE_WEIGHTS_INDEX_NAME
        if index.is_file():
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        single = folder / SAFE_WEIGHTS_NAME
        return [single] if single.is_file() else None
    options = {"_raise_exceptions_for_missing_entries": False, "_raise_exceptions_for_connection_errors": False}
    index = cached_file(name_or_path, SAFE_WEIGHTS_INDEX_NAME, **options)
    if index is not None:
        return [Path(file) for file in get_checkpoint_shard_files(name_or_path, index)[0]]
    single = cached_file(name_or_path, SAFE_WEIGHTS_NAME, **options)
    return [Path(single)] if single is not None else None


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
