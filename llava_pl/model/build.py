"""Building a ``LlavaModel`` from the ``model`` config (vision, projector and LLM sub-configs)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from transformers import PreTrainedTokenizerBase

from llava_pl.model.llava import LlavaModel
from llava_pl.projector_io import load_projector


def build_model(model_cfg: Any, tokenizer: PreTrainedTokenizerBase) -> LlavaModel:
    """Vision encoder, projector sized from both backbones, and the LLM sized to the tokenizer.

    ``model_cfg.projector_weights`` (a file or an align run's stage folder) replaces the projector's
    initial weights — the hand-off from the align stage to the finetune stage.
    """
    vision = instantiate(model_cfg["vision"])
    llm = instantiate(model_cfg["llm"]["model"], tokenizer=tokenizer)
    model = LlavaModel(vision, instantiate(model_cfg["projector"]), llm)
    if model_cfg.get("projector_weights"):
        load_projector(model.projector, model_cfg["projector_weights"])
    return model
