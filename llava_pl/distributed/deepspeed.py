"""DeepSpeed ZeRO through Lightning's ``DeepSpeedStrategy``, its config generated from the run's Hydra values.

The stage's global and micro batch, the accumulation derived from them and the world size, its gradient
clipping and the trainer's precision go into the DeepSpeed config, so nothing is stated twice. ``auto`` bucket
sizes are derived from the LLM's hidden size as Hugging Face's DeepSpeed integration (and so LLaVA's
``zero3.json``) derives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

from llava_pl.distributed.partition_on_load import partition_on_load
from llava_pl.model.pretrained_weights import PretrainedWeights
from llava_pl.stage import StageConfig


def _auto_sizes(hidden_size: int) -> dict[str, int]:
    return {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }


def deepspeed_config(
    stage: StageConfig,
    world_size: int,
    precision: str,
    zero_optimization: Mapping[str, Any],
    hidden_size: int,
) -> dict[str, Any]:
    """The DeepSpeed config of one stage.

    Args:
        world_size: data-parallel processes (GPUs over all nodes).
        precision: Lightning's ``trainer.precision`` (``bf16-mixed``, ``16-mixed``, ``32-true``, ...).
        zero_optimization: DeepSpeed's ``zero_optimization`` section; ``auto`` sizes are derived from
            ``hidden_size`` (the LLM's).
    """
    zero = dict(zero_optimization)
    for key, value in _auto_sizes(hidden_size).items():
        if zero.get(key) == "auto":
            zero[key] = value
    left = [key for key, value in zero.items() if value == "auto"]
    if left:
        raise ValueError(f"zero_optimization: no rule derives {left} from the run; give numbers instead of auto")
    precision = str(precision)
    config: dict[str, Any] = {
        "train_batch_size": stage.global_batch_size,
        "train_micro_batch_size_per_gpu": stage.micro_batch_size,
        "gradient_accumulation_steps": stage.accumulation(world_size),
        "gradient_clipping": stage.gradient_clip_val,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the module's AdamW with its per-part parameter groups
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision.startswith("16"), "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10**9,  # Lightning's loggers report progress
    }
    if "offload_optimizer" in zero:
        # torch's AdamW then steps on the offloaded CPU copies; DeepSpeedCPUAdam would be faster but compiles an op
        config["zero_force_ds_cpu_optimizer"] = False
    return config


class LlavaDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose config is ``deepspeed_config`` of the stage being trained.

    Args:
        zero_optimization: DeepSpeed's ``zero_optimization`` section (``stage`` 2 or 3, offloading, buckets).
        build_sharded: under ZeRO-3, build the pretrained backbones empty and partition them module by module as
            their weights are read (``fill_pretrained``), so no process holds the whole model; ``False``, and
            under ZeRO-2: every process loads the whole model.
        kwargs: ``DeepSpeedStrategy``'s own (``load_full_weights``, ``exclude_frozen_parameters``, ...).
    """

    def __init__(self, zero_optimization: Mapping[str, Any], build_sharded: bool = True, **kwargs: Any) -> None:
        self.zero_optimization = dict(zero_optimization)
        self.build_sharded = build_sharded and self.zero_optimization.get("stage") == 3
        super().__init__(config={"zero_optimization": dict(self.zero_optimization)}, **kwargs)

    def fill_pretrained(self, model: nn.Module, weights: PretrainedWeights) -> None:
        """ZeRO-3 partition on load (``llava_pl.distributed.partition_on_load``), from ``configure_model``: rank 0
        reads the pretrained parameters, which ``deepspeed.zero.Init(module=...)`` broadcasts and partitions.
        What the checkpoints leave out is initialised from a forked random generator."""
        import deepspeed

        def partition(module: nn.Module) -> None:
            deepspeed.zero.Init(module=module, config_dict_or_path=self.config, remote_device=self.remote_device,
                                mem_efficient_linear=False)

        with torch.random.fork_rng(devices=[self.root_device] if self.root_device.type == "cuda" else []):
            partition_on_load(model, weights, self.root_device, partition, reads_parameters=self.global_rank == 0)

    def _format_config(self) -> None:
        module = self.lightning_module
        self.config = deepspeed_config(
            module.stage,
            self.world_size,
            str(self.precision_plugin.precision),
            self.zero_optimization,
            module.model.llm.config.get_text_config().hidden_size,
        )
        accumulation = module.trainer.accumulate_grad_batches
        if self.config["gradient_accumulation_steps"] != accumulation:
            raise ValueError(f"the trainer accumulates {accumulation} micro-batches but the stage derives "
                             f"{self.config['gradient_accumulation_steps']}")
