"""Pretrained weights read after the model is sharded: no process ever holds the whole model.

Inside ``deferred_weights()`` the pretrained factories (``causal_lm_from_pretrained``,
``VisionEncoder.from_pretrained``) build their part empty, on the meta device, and record where each of its
weights lies in the part's weight files; parts with random initial weights build as usual. A sharding
strategy then shards the model, allocates its empty tensors and calls ``PretrainedWeights.fill``, which reads,
tensor by tensor, only the rows of each weight that the process's shard holds.

A part whose weights cannot be read this way (GGUF files, checkpoints that need more than key renaming, extra
``from_pretrained`` options) is loaded whole, as without deferring.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from llava_pl.model.checkpoint_keys import checkpoint_key_mapping, floating_dtype, stored_tensors, weight_files

log = logging.getLogger(__name__)

_DEFERRED: ContextVar[PretrainedWeights | None] = ContextVar("llava_pl_deferred_weights", default=None)


@dataclass(frozen=True)
class WeightSlot:
    """One tensor of the model and where its pretrained value lies. The module is kept rather than the tensor:
    the module object stays the same through LoRA wrapping, sharding and materialising, its tensors do not."""

    module: nn.Module
    name: str
    file: Path
    key: str


class PretrainedWeights:
    """The pretrained weights of a model's empty parts, read into the model once it is allocated."""

    def __init__(self) -> None:
        self.slots: list[WeightSlot] = []

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, part: PreTrainedModel, files: list[Path]) -> bool:
        """Records where each tensor of the empty ``part`` lies in ``files``; False (nothing recorded) when the
        checkpoint's keys need more than renaming to fit the part."""
        try:
            file_of = {key: file for file in files for key in _keys(file)}
        except (RuntimeError, pickle.UnpicklingError):  # a .bin file of the legacy format: it cannot be mapped
            return False
        mapping = checkpoint_key_mapping(part, file_of)
        if mapping is None:
            return False
        if not mapping:
            raise ValueError(f"none of the weights in {[str(file) for file in files]} fit {type(part).__name__}")
        covered = set()
        for name, key in mapping.items():
            module_name, _, attribute = name.rpartition(".")
            module = part.get_submodule(module_name)
            self.slots.append(WeightSlot(module, attribute, file_of[key], key))
            covered.add(id(getattr(module, attribute)))
        missing = [name for name, tensor in part.state_dict(keep_vars=True).items() if id(tensor) not in covered]
        if missing:  # as from_pretrained does: they keep their initialisation
            log.warning(f"{type(part).__name__}: no pretrained weights for {missing}; they start initialised")
        return True

    @torch.no_grad()
    def fill(self, tensors: Callable[[WeightSlot], bool] = lambda slot: True) -> None:
        """Copies each slot's pretrained value (cast to the tensor's dtype) into the tensor now in its place:
        of a sharded tensor (``DTensor``) only this process's part is read. ``tensors`` selects the slots."""
        for slot in self.slots:
            if tensors(slot):
                _read_into(getattr(slot.module, slot.name), slot)


def _keys(file: Path) -> list[str]:
    with stored_tensors(file) as handle:
        return list(handle.keys())


READ_CHUNK_BYTES = 64 << 20


def _read_into(tensor: torch.Tensor, slot: WeightSlot) -> None:
    """Reads this process's part of the slot's stored tensor into ``tensor``, at most ``READ_CHUNK_BYTES`` at a
    time, the file reopened per chunk: what is held besides the model is one chunk and the file pages it mapped,
    not a whole slice (a Llama-3 embedding's half is ~1 GiB in float32)."""
    from torch.distributed.tensor import DTensor

    if tensor.is_meta:
        raise RuntimeError(f"{slot.key}: the model's tensor is still on the meta device; materialise it first")
    with stored_tensors(slot.file) as handle:
        stored_shape = tuple(handle.get_slice(slot.key).get_shape())
    if stored_shape != tuple(tensor.shape):
        raise ValueError(f"{slot.file}: {slot.key} has shape {stored_shape}, the model expects {tuple(tensor.shape)}")
    if isinstance(tensor, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local = tensor.to_local()
        shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    else:
        local, shape, offset = tensor, tuple(tensor.shape), (0,) * tensor.dim()
    if not local.numel():
        return
    if local.dim() == 0:
        with stored_tensors(slot.file) as handle:
            local.copy_(handle.get_slice(slot.key)[:])
        return
    rows = shape[0]
    row_bytes = max(1, local[0].numel() * local.element_size())
    step = max(1, READ_CHUNK_BYTES // row_bytes)
    rest = tuple(slice(start, start + size) for start, size in zip(offset[1:], shape[1:]))
    for first in range(0, rows, step):
        count = min(step, rows - first)
        with stored_tensors(slot.file) as handle:  # closed per chunk: the pages it mapped leave with it
            rows_read = slice(offset[0] + first, offset[0] + first + count)
            local[first:first + count].copy_(handle.get_slice(slot.key)[(rows_read, *rest)])


@contextmanager
def deferred_weights() -> Iterator[PretrainedWeights]:
    """Pretrained factories called inside build their part empty and record its weights in the yielded object."""
    weights = PretrainedWeights()
    token = _DEFERRED.set(weights)
    try:
        yield weights
    finally:
        _DEFERRED.reset(token)


def deferred_part(
    name_or_path: str, build_empty: Callable[[list[Path]], PreTrainedModel], options: Mapping[str, Any]
) -> PreTrainedModel | None:
    """Inside ``deferred_weights()``: the part that ``build_empty`` builds on the meta device from the checkpoint
    files, its weights recorded. None where they cannot be deferred (outside, ``options`` for ``from_pretrained``
    given, no weight files that can be mapped, conversions needed): the caller then loads the part as usual."""
    weights = _DEFERRED.get()
    if weights is None:
        return None
    files = None if options else weight_files(name_or_path)
    if not files:
        log.info(f"{name_or_path}: loaded whole, not read per shard: it has no safetensors or .bin files, or "
                 f"from_pretrained options are given ({sorted(options)})")
        return None
    part = build_empty(files)
    if not weights.add(part, files):
        log.info(f"{name_or_path}: loaded whole, not read per shard: its weights need conversion")
        return None
    return part


def pretrained_dtype(dtype: str | torch.dtype | None, config: PretrainedConfig, files: list[Path]) -> torch.dtype:
    """The dtype ``from_pretrained`` gives a model for its ``dtype`` argument: ``None`` and ``"auto"`` are the
    config's dtype, else the checkpoint's first floating-point tensor's."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16, auto)")
        return resolved
    if getattr(config, "dtype", None) is not None:
        return config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, config.dtype)
    return floating_dtype(files[0]) or torch.get_default_dtype()
