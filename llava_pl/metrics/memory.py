"""Per-GPU memory of a stage's model states under each strategy, computed from parameter counts.

Model states are the bf16 weights forward and backward read, the float32 trainable weights (the parameters
themselves, or the optimizer's master copies under DeepSpeed), gradients, Adam's two moments, the frozen parts as
the precision policy holds them under ``bf16-mixed`` (``llava_pl/precision.py``), and the optimizer step's
temporary. Activations
are not model states: ``checkpointed_activations`` estimates what gradient checkpointing keeps of them.
docs/precision.md prints the tables for LLaVA-1.5-7B and -13B and states every assumption; ``bench/memory_table.py``
computes them from the presets' architectures.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

STRATEGIES = ("ddp", "fsdp", "fsdp_grad_op", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
BF16, FP32, ADAM = 2, 4, 8  # bytes per parameter: a bf16 value, a float32 value, Adam's two float32 moments
GIB = 2**30


@dataclass(frozen=True)
class ParameterCounts:
    """Attributes:
        trainable: parameters the stage trains.
        frozen: parameters it freezes.
        largest_block: parameters of the largest transformer block (FSDP's unit, one gathered at a time).
        outside_blocks: parameters in no block (embeddings, LM head, projector, norms, the tower's embeddings):
            FSDP's root unit, gathered for the whole step.
    """

    trainable: int
    frozen: int
    largest_block: int
    outside_blocks: int


def count_parameters(model: nn.Module, block_classes: tuple[type[nn.Module], ...]) -> ParameterCounts:
    """Counts ``model``'s parameters (a tied weight once) by ``requires_grad``; works on the meta device."""
    blocks = [module for module in model.modules() if block_classes and isinstance(module, block_classes)]
    in_blocks = {id(parameter) for block in blocks for parameter in block.parameters()}
    parameters = list(model.parameters())
    return ParameterCounts(
        trainable=sum(parameter.numel() for parameter in parameters if parameter.requires_grad),
        frozen=sum(parameter.numel() for parameter in parameters if not parameter.requires_grad),
        largest_block=max((sum(parameter.numel() for parameter in block.parameters()) for block in blocks), default=0),
        outside_blocks=sum(parameter.numel() for parameter in parameters if id(parameter) not in in_blocks),
    )


@dataclass(frozen=True)
class MemoryRow:
    """Bytes per GPU of one strategy's model states.

    ``gathered`` lives only through forward and backward (autocast's bf16 casts, FSDP/ZeRO-3's gathered units)
    and ``step_temporary`` only in the optimizer step (torch's foreach AdamW allocates one float32 temporary the
    size of the parameters it steps), so the peak holds the larger of the two.
    """

    strategy: str
    bf16_weights: float  # the module's own bf16 trainable weights (DeepSpeed casts the module), sharded or not
    gathered: float  # bf16 copies for compute: autocast's casts, or the gathered units
    fp32_weights: float  # float32 trainable weights: the parameters, or DeepSpeed's master partitions
    gradients: float
    adam: float  # exp_avg and exp_avg_sq, float32
    frozen: float  # frozen parameters at rest, bf16 (their gathered copies are under ``gathered``)
    step_temporary: float

    @property
    def peak(self) -> float:
        resident = self.bf16_weights + self.fp32_weights + self.gradients + self.adam + self.frozen
        return resident + max(self.gathered, self.step_temporary)


def memory_rows(counts: ParameterCounts, gpus: int, zero3_max_live_parameters: int = 10**9) -> list[MemoryRow]:
    """The model states per GPU under each of ``STRATEGIES`` on ``gpus`` GPUs, ``bf16-mixed``.

    - ``ddp``: everything replicated; autocast's bf16 copy of every trainable weight lives until the backward.
    - ``fsdp``: float32 shards; gathered in bf16 are the root unit for the whole step and two blocks (the running
      one and the prefetched next one).
    - ``fsdp_grad_op``: as ``fsdp``, but every unit stays gathered from its forward to its backward.
    - ``deepspeed_zero2``: the module is bf16 on every GPU; gradients (bf16), master weights and moments sharded;
      the step converts the gradient shard to float32 besides AdamW's temporary.
    - ``deepspeed_zero3``: bf16 parameters sharded too; at most ``stage3_max_live_parameters`` gathered.
    - ``deepspeed_zero3_offload``: parameters, gradients and optimizer state in host memory (the step runs
      there); the GPU holds the gathered working set only.
    """
    trainable, frozen, n = counts.trainable, counts.frozen, gpus
    shard = trainable / n
    gathered_zero3 = BF16 * min(zero3_max_live_parameters, trainable + frozen)
    rows = {  # bf16 weights, gathered, fp32 weights, gradients, adam, frozen, step temporary
        "ddp": (0, BF16 * trainable, FP32 * trainable, FP32 * trainable, ADAM * trainable, BF16 * frozen,
                FP32 * trainable),
        "fsdp": (0, BF16 * (counts.outside_blocks + 2 * counts.largest_block), FP32 * shard, FP32 * shard,
                 ADAM * shard, BF16 * frozen / n, FP32 * shard),
        "fsdp_grad_op": (0, BF16 * (trainable + frozen), FP32 * shard, FP32 * shard, ADAM * shard, BF16 * frozen / n,
                         FP32 * shard),
        "deepspeed_zero2": (BF16 * trainable, 0, FP32 * shard, BF16 * shard, ADAM * shard, BF16 * frozen,
                            2 * FP32 * shard),
        "deepspeed_zero3": (BF16 * shard, gathered_zero3, FP32 * shard, BF16 * shard, ADAM * shard, BF16 * frozen / n,
                            2 * FP32 * shard),
        "deepspeed_zero3_offload": (0, gathered_zero3, 0, 0, 0, 0, 0),
    }
    return [MemoryRow(strategy, *rows[strategy]) for strategy in STRATEGIES]


def offload_host_bytes(counts: ParameterCounts) -> float:
    """Host memory of ``deepspeed_zero3_offload`` over all GPUs of a run: bf16 parameters, float32 gradients,
    master weights and moments of what trains."""
    return BF16 * (counts.trainable + counts.frozen) + (FP32 + FP32 + ADAM) * counts.trainable


def checkpointed_activations(layers: int, hidden: int, micro_batch: int, sequence: int) -> float:
    """Bytes gradient checkpointing keeps for the backward: each LLM block's bf16 input (one block's full
    activations, recomputed in turn, and the logits come on top)."""
    return BF16 * layers * micro_batch * sequence * hidden


def format_table(rows: list[MemoryRow]) -> str:
    """A Markdown table of ``rows`` in GiB."""
    columns = [field.name for field in fields(MemoryRow)][1:]
    lines = ["| strategy | " + " | ".join(name.replace("_", " ") for name in columns) + " | peak |",
             "|---" * (len(columns) + 2) + "|"]
    for row in rows:
        values = [getattr(row, name) for name in columns] + [row.peak]
        lines.append(f"| {row.strategy} | " + " | ".join(f"{value / GIB:.1f}" for value in values) + " |")
    return "\n".join(lines)
