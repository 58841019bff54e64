"""Partition on load (ZeRO-3): a sharded build's empty parts are allocated, initialised, given their pretrained
weights and partitioned one module at a time, so no process holds more than one module's weights whole.

DeepSpeed partitions a parameter by broadcasting rank 0's value and keeping each rank's slice, so only the
process that ``reads_parameters`` (rank 0) reads the pretrained parameters; buffers, never partitioned, are read
by every process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from llava_pl.lora import reset_adapters
from llava_pl.model.pretrained_weights import PretrainedWeights


def _units(module: nn.Module) -> Iterator[tuple[nn.Module, bool]]:
    """Each module with whether its whole subtree goes with it (a LoRA layer and its adapters: peft initialises
    them together), parents before children."""
    if isinstance(module, LoraLayer):
        yield module, True
        return
    yield module, False
    for child in module.children():
        yield from _units(child)


def _innermost(model: nn.Module, kind: type[nn.Module]) -> dict[int, nn.Module]:
    """For every module, the innermost module of ``kind`` that contains it (itself included)."""
    found: dict[int, nn.Module] = {}
    for outer in model.modules():  # outer ones first: inner ones overwrite them
        if isinstance(outer, kind):
            found.update((id(module), outer) for module in outer.modules())
    return found


@torch.no_grad()
def partition_on_load(
    model: nn.Module,
    weights: PretrainedWeights,
    device: torch.device,
    partition: Callable[[nn.Module], None],
    reads_parameters: bool,
) -> None:
    """Allocates ``model``'s empty (meta) tensors on ``device`` module by module, children first: each module is
    initialised as its constructor would (a Hugging Face part's ``_init_weights``, else ``reset_parameters``,
    peft's for LoRA adapters), given its pretrained weights and handed to ``partition``; modules built with
    their weights are moved to ``device`` and handed over too. A tensor shared by several modules (tied
    embeddings) is allocated once and stays shared. Tensors DeepSpeed already converted (``ds_id``) are left."""
    holders: dict[int, list[tuple[dict, str]]] = defaultdict(list)
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    holders[id(tensor)].append((table, name))
    hf_owner = _innermost(model, PreTrainedModel)
    peft_owner = _innermost(model, PeftModel)
    for unit, whole in reversed(list(_units(model))):
        modules = list(unit.modules()) if whole else [unit]
        tensors = [(table, name, tensor) for module in modules for table in (module._parameters, module._buffers)
                   for name, tensor in table.items() if tensor is not None and not hasattr(tensor, "ds_id")]
        empty = {id(tensor): tensor for _, _, tensor in tensors if tensor.is_meta}
        # parts built with their weights (random ones) go to the device and are partitioned alike
        elsewhere = [(table, name, tensor) for table, name, tensor in tensors
                     if not tensor.is_meta and tensor.device != device]
        if not empty and not elsewhere:
            continue
        for table, name, tensor in elsewhere:
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.to(device)
            else:
                table[name] = tensor.to(device)
        if empty:
            allocated = _allocate(empty, holders, device)
            # a module's initialisation covers all its tensors: those built with their weights keep them
            kept = [(table, name, table[name].detach().clone())
                    for table, name, tensor in tensors if not tensor.is_meta]
            for module in modules:
                owner = hf_owner.get(id(module))
                if owner is not None:
                    owner._init_weights(module)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            for table, name, value in kept:
                table[name].data.copy_(value)
            if whole and id(unit) in peft_owner:
                reset_adapters(unit, peft_owner[id(unit)])
            # by tensor, not module: a tied head allocated here is filled from the embedding's slot
            weights.fill(lambda slot: id(getattr(slot.module, slot.name)) in allocated
                         and (reads_parameters or slot.name in slot.module._buffers))
        partition(unit)


def _allocate(empty: dict[int, torch.Tensor], holders: dict[int, list[tuple[dict, str]]],
              device: torch.device) -> set[int]:
    """Puts an uninitialised tensor on ``device`` in place of each empty one, in every module holding it;
    returns the new tensors' ids."""
    allocated = set()
    for key, tensor in empty.items():
        replacement = torch.empty_like(tensor, device=device)
        if isinstance(tensor, nn.Parameter):
            replacement = nn.Parameter(replacement, requires_grad=tensor.requires_grad)
        for table, name in holders.pop(key):
            table[name] = replacement
        allocated.add(id(replacement))
    return allocated
