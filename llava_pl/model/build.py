"""Building a ``LlavaModel`` from the ``model`` config (vision, projector and LLM sub-configs), with its weights
or as an empty architecture on the meta device."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from hydra.utils import instantiate
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llava_pl.lora import reset_adapters
from llava_pl.model.architecture import architecture_only, is_architecture_only
from llava_pl.model.llava import LlavaModel
from llava_pl.checkpoint.projector_file import load_projector

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _assemble(model_cfg: Any, tokenizer: PreTrainedTokenizerBase | None) -> LlavaModel:
    vision = instantiate(model_cfg["vision"])
    llm = instantiate(model_cfg["llm"]["model"], tokenizer=tokenizer)
    with torch.device("meta") if is_architecture_only() else nullcontext():  # the projector is built here
        return LlavaModel(vision, instantiate(model_cfg["projector"]), llm, model_cfg["llm"].get("block_class"))


def build_model(model_cfg: Any, tokenizer: PreTrainedTokenizerBase) -> LlavaModel:
    """Vision encoder, projector sized from both backbones, and the LLM sized to the tokenizer.

    ``model_cfg.projector_weights`` (a file or an align run's stage folder) replaces the projector's
    initial weights — the hand-off from the align stage to the finetune stage. Inside ``deferred_weights()``
    (``llava_pl.model.pretrained_weights``) the pretrained backbones are built empty, their weights read after
    sharding; the rest is built as here, drawing the same random numbers, so both builds start alike.
    """
    model = _assemble(model_cfg, tokenizer)
    if model_cfg.get("projector_weights"):
        load_projector(model.projector, model_cfg["projector_weights"])
    return model


def build_empty_model(model_cfg: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> LlavaModel:
    """The model's architecture on the meta device: every parameter and buffer is a meta tensor, no weights
    are read and no memory is allocated.

    Pretrained parts read only their configs (the package's carried copy for the presets' hub ids, see
    ``llava_pl.presets``), so a 13B preset builds in a fraction of a second without downloads. The tokenizer
    is needed only by parts sized to it (``causal_lm_from_config``); ``projector_weights`` is not loaded.
    A checkpoint's weights go into it after ``materialize``, so pretrained weights are never read only to be
    overwritten.
    """
    with architecture_only():
        return _assemble(model_cfg, tokenizer)


def materialize(model: ModuleT, device: torch.device | str = "cpu") -> ModuleT:
    """Allocates the empty (meta-device) tensors of ``model`` on ``device`` and initialises them as their
    constructors would; tensors already allocated keep their values (parts with random initial weights in a
    deferred build, ``llava_pl.model.pretrained_weights``). A model sharded by FSDP2 allocates its shards.

    Hugging Face parts run their own initialisation, which also recomputes the buffers no checkpoint holds
    (rotary frequencies, position ids), and re-tie their embeddings; LoRA adapters get peft's initialisation;
    other modules are ``reset_parameters``.
    """
    tensors = _named_tensors(model)
    if not any(tensor.is_meta for tensor in tensors.values()):
        return model
    kept = {name: _local(tensor).clone() for name, tensor in tensors.items() if not tensor.is_meta}
    model.to_empty(device=device)
    inside_hf: set[int] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and id(module) not in inside_hf:
            module.initialize_weights()
            module.tie_weights()
            inside_hf.update(id(child) for child in module.modules())
    with torch.no_grad():
        for module in model.modules():
            if id(module) not in inside_hf and hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, PeftModel):  # the LLM's initialisation drew its adapters like any linear layer
                for layer in module.modules():
                    if isinstance(layer, LoraLayer):
                        reset_adapters(layer, module)
        for name, tensor in _named_tensors(model).items():
            if name in kept:
                _local(tensor).copy_(kept[name])
    return model


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict([*model.named_parameters(), *model.named_buffers()])


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (``DTensor``) tensor, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
