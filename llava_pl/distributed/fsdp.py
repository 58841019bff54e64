"""FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``, sharded per transformer block.

Lightning leaves the sharding to ``LightningModule.configure_model``; this strategy carries the settings and
does it there (``LlavaModule.configure_model`` calls ``shard``), so the strategy stays one config override.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from llava_pl.checkpoint.sharded import is_distcp_checkpoint, load_checkpoint, refuse_deepspeed_resume
from llava_pl.model.build import materialize
from llava_pl.model.pretrained_weights import PretrainedWeights

ParamDtype = Literal["auto", "float32", "bfloat16", "float16"] | None


class FSDP2Strategy(ModelParallelStrategy):
    """Data parallelism over every process with parameters, gradients and optimizer state sharded (FSDP2).

    Args:
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3-like, least
            memory). ``False`` keeps them until the backward, so only gradients and optimizer state stay
            sharded (ZeRO-2-like, one all-gather per block and step instead of two).
        param_dtype: the dtype parameters are gathered and computed in; ``auto`` follows ``trainer.precision``
            (bfloat16 under ``bf16-mixed``, else the parameters' own). Sharded master weights stay float32.
        reduce_dtype: the dtype gradients are reduced in (``null``: ``param_dtype``).
        activation_checkpointing: recompute each block's activations in the backward instead of keeping them.
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory.
        build_sharded: build the pretrained backbones empty and read each process's shards of their weights
            after sharding (``fill_pretrained``), so no process holds the whole model; ``False``: every process
            loads the whole model, then shards it.
        kwargs: ``ModelParallelStrategy``'s own (``save_distributed_checkpoint``, ``process_group_backend``, ...).
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        param_dtype: ParamDtype = "auto",
        reduce_dtype: ParamDtype = "float32",
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        build_sharded: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.activation_checkpointing = activation_checkpointing
        self.cpu_offload = cpu_offload
        self.build_sharded = build_sharded

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" mesh is nodes x GPUs-per-node for tensor parallelism; here every
        # process is one data-parallel shard.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def _dtype(self, name: ParamDtype) -> torch.dtype | None:
        if name == "auto":
            precision = str(self.precision_plugin.precision)
            return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
        return getattr(torch, name) if name else None

    def shard(self, model: nn.Module, block_classes: tuple[type[nn.Module], ...]) -> None:
        """Applies activation checkpointing and ``fully_shard`` to every block, then to ``model`` for the rest
        (embeddings, projector, norms, head). Called once, from ``configure_model``; a model already sharded
        (a second ``fit`` on the same module) is left as it is."""
        from torch.distributed._composable import checkpoint
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            FSDPModule,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        if isinstance(model, FSDPModule):
            return
        param_dtype = self._dtype(self.param_dtype)
        options = {
            "mesh": self.device_mesh["data_parallel"],
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype,
                                              reduce_dtype=self._dtype(self.reduce_dtype) or param_dtype),
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        blocks = [module for module in model.modules() if block_classes and isinstance(module, block_classes)]
        for block in blocks:
            if self.activation_checkpointing:
                checkpoint(block)
            fully_shard(block, **options)
        fully_shard(model, **options)
        if hasattr(model, "generate"):  # evaluation calls generate, not forward: FSDP must gather around it too
            register_fsdp_forward_method(model, "generate")

    def fill_pretrained(self, model: nn.Module, weights: PretrainedWeights) -> None:
        """After ``shard``: allocates this process's shards of the model's empty parts and reads their pretrained
        weights, of each tensor only the rows its shard holds. What the checkpoints leave out is initialised
        from a forked random generator, so training draws the same random numbers as after a whole build."""
        device = torch.device("cpu") if self.cpu_offload else self.root_device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            materialize(model, device)
        weights.fill()

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded folder loads as Lightning does (resharded to this world size); a single-file checkpoint
        (DDP's, one device's, a consolidated one) is sharded here: Lightning's own path maps optimizer state to
        parameters by ``named_parameters`` order, which the per-part parameter groups do not follow."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        path = Path(self.broadcast(checkpoint_path))
        if is_distcp_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        refuse_deepspeed_resume(path)
        checkpoint = load_checkpoint(path)
        strict = self.lightning_module.strict_loading
        options = StateDictOptions(full_state_dict=True, strict=strict)
        set_model_state_dict(self.model, checkpoint.pop("state_dict"), options=options)
        names = {id(parameter): name for name, parameter in self.model.named_parameters()}
        for optimizer, state in zip(self.optimizers, checkpoint.pop("optimizer_states", [])):
            order = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
            named = {
                "state": {order[index]: value for index, value in state["state"].items()},
                "param_groups": [{**group, "params": [order[index] for index in group["params"]]}
                                 for group in state["param_groups"]],
            }
            set_optimizer_state_dict(self.model, optimizer, named, options=options)
        return checkpoint


@contextmanager
def resharded_afterwards(model: nn.Module) -> Iterator[None]:
    """Frees the parameters FSDP2 keeps gathered after inference: the root unit's (FSDP keeps them until the
    backward, which inference never runs) and, with ``reshard_after_forward=False``, every block's. A model that
    is not sharded is left as it is."""
    from torch.distributed.fsdp import FSDPModule

    try:
        yield
    finally:
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
