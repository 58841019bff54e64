"""Transformer block classes that backbones name for FSDP wrapping and activation checkpointing."""

from __future__ import annotations

from hydra.utils import get_class
from torch import nn


def resolve_block_class(path: str, model: nn.Module) -> type[nn.Module]:
    """The class at ``path`` (e.g. ``transformers.models.llama.modeling_llama.LlamaDecoderLayer``), checked to be
    the class of at least one submodule of ``model``."""
    try:
        block_class = get_class(path)
    except Exception as error:  # hydra raises ImportError or ValueError depending on which part is missing
        raise ValueError(f"block_class {path!r} cannot be imported: {error}") from error
    if not any(isinstance(module, block_class) for module in model.modules()):
        raise ValueError(
            f"block_class {path} does not occur in {type(model).__name__}, whose stacked blocks are "
            f"{_stacked_block_classes(model)}"
        )
    return block_class


def _stacked_block_classes(model: nn.Module) -> list[str]:
    lists = (module for module in model.modules() if isinstance(module, nn.ModuleList))
    return sorted({type(block).__name__ for blocks in lists for block in blocks})
