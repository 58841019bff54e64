"""Speed switches applied to a built ``LlavaModel``: compiled LLM blocks, and the towers gradient checkpointing covers."""

from __future__ import annotations

import logging

from torch import nn
from transformers import PreTrainedModel

from llava_pl.model.fused_vision import FusedVisionEncoder
from llava_pl.model.llava import LlavaModel
from llava_pl.model.vision import VisionEncoder

log = logging.getLogger(__name__)


def vision_towers(vision: VisionEncoder | FusedVisionEncoder) -> list[PreTrainedModel]:
    """The Hugging Face towers inside a (possibly fused) vision encoder."""
    if isinstance(vision, FusedVisionEncoder):
        return [encoder.tower for encoder in vision.encoders.values()]
    return [vision.tower]


def llm_blocks(model: LlavaModel) -> list[nn.Module]:
    """The LLM's decoder blocks: instances of its configured block class, else the longest module list."""
    if model.llm_block_classes:
        return [module for module in model.llm.modules() if isinstance(module, model.llm_block_classes)]
    lists = [module for module in model.llm.modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model.llm).__name__} has no list of blocks to compile: set model.llm.block_class")
    return list(max(lists, key=len))


def compile_blocks(model: LlavaModel) -> int:
    """``torch.compile`` every LLM block in place (``nn.Module.compile``: parameter names and checkpoints are
    unchanged); returns how many blocks were compiled.

    Blocks, not the whole model, so that a graph break in the splice or the loss costs nothing and every block
    reuses one compiled graph.
    """
    blocks = llm_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    log.info(f"torch.compile: {len(blocks)} LLM blocks of {type(blocks[0]).__name__}")
    return len(blocks)
