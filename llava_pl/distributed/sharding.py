"""Which strategies shard the model's parameters across processes."""

from __future__ import annotations

from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy

from llava_pl.distributed.fsdp import FSDP2Strategy


def shards_parameters(strategy: Strategy) -> bool:
    """Whether the model's parameters are sharded or converted by the strategy (FSDP, DeepSpeed): its forward
    then needs every rank, so nothing may run the model on rank 0 alone."""
    return isinstance(strategy, (FSDP2Strategy, DeepSpeedStrategy))


def builds_sharded(strategy: Strategy | str) -> bool:
    """Whether the strategy builds the model sharded: its pretrained backbones empty, each process reading its
    shards of their weights once the model is sharded (the strategy's ``fill_pretrained``)."""
    return bool(getattr(strategy, "build_sharded", False))
