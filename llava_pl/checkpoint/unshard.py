"""The trained model as one plain module again after a stage trained under a sharding strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from transformers import PreTrainedTokenizerBase

from llava_pl.checkpoint.load import model_from_checkpoint
from llava_pl.checkpoint.sharded import load_checkpoint
from llava_pl.distributed.sharding import shards_parameters
from llava_pl.model.llava import LlavaModel


def unsharded_model(
    trainer: L.Trainer, model: LlavaModel, model_cfg: Any, tokenizer: PreTrainedTokenizerBase, checkpoint: Path
) -> LlavaModel:
    """``model`` itself under DDP or one device; under a sharding strategy a fresh full model on every rank,
    loaded from the stage's final ``checkpoint`` (which every rank has finished writing), for the next stage,
    the projector file and the evaluation."""
    if not shards_parameters(trainer.strategy):
        return model
    trainer.strategy.barrier("stage checkpoint written")
    return model_from_checkpoint(model_cfg, tokenizer, load_checkpoint(checkpoint))
