"""Architecture-only building: inside ``architecture_only()`` the model factories build on the meta device, and
the pretrained ones read only their configs, never weights.

A 7B or 13B preset then costs no memory and no download of weights. ``build.build_empty_model`` builds a
whole model this way: a sharded strategy can shard it before anything is allocated, and a checkpoint can be
restored into it without first reading pretrained weights that it would overwrite.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from transformers import PretrainedConfig

from llava_pl.presets.carried import carried_folder

_ARCHITECTURE_ONLY: ContextVar[bool] = ContextVar("llava_pl_architecture_only", default=False)


@contextmanager
def architecture_only() -> Iterator[None]:
    """Model factories called inside build empty (meta-device) modules from configs alone."""
    token = _ARCHITECTURE_ONLY.set(True)
    try:
        yield
    finally:
        _ARCHITECTURE_ONLY.reset(token)


def is_architecture_only() -> bool:
    return _ARCHITECTURE_ONLY.get()


def config_source(name_or_path: str) -> str:
    """Where the config (and image processor config) of ``name_or_path`` is read when only the architecture is
    built: the package's carried copy for a hub id it carries, else ``name_or_path`` itself (a local folder or
    the hub, which then serves a few kB of JSON)."""
    folder = carried_folder(name_or_path)
    return str(folder) if folder is not None else name_or_path


def resolve_dtype(dtype: str | torch.dtype | None, config: PretrainedConfig) -> torch.dtype | None:
    """``from_pretrained``'s dtype argument as a ``torch.dtype``: ``"auto"`` is the config's own dtype."""
    if dtype == "auto":
        return getattr(config, "dtype", None)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16, auto)")
        return resolved
    return dtype
