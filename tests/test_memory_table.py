"""The memory table of docs/precision.md: LLaVA-1.5-7B's parameter counts from the preset built on the meta device
are the published architecture's, worked out by hand here, and a few of the table's numbers follow from them."""

from __future__ import annotations

import pytest

from bench.memory_table import preset_table
from llava_pl.metrics.memory import GIB, ParameterCounts, memory_rows

# Vicuna-7B (Llama-2-7B): embeddings and untied head 32000 x 4096 each; per block attention 4 x 4096^2, MLP
# 3 x 4096 x 11008, two norms of 4096; 32 blocks and a final norm.
BLOCK_7B = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
VICUNA_7B = 2 * 32000 * 4096 + 32 * BLOCK_7B + 4096
PROJECTOR_7B = 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # mlp2x_gelu, CLIP's 1024 channels to 4096
# CLIP ViT-L/14 at 336 px: patch convolution (no bias), class embedding, 577 positions, pre- and post-norm, 24
# blocks of attention 4 x (1024^2 + 1024), MLP 1024 x 4096 + 4096 + 4096 x 1024 + 1024, two norms (weight, bias)
CLIP_EMBEDDINGS = 3 * 14 * 14 * 1024 + 1024 + 577 * 1024 + 2 * 1024 + 2 * 1024
CLIP_336 = CLIP_EMBEDDINGS + 24 * (4 * (1024**2 + 1024) + 1024 * 4096 + 4096 + 4096 * 1024 + 1024 + 4 * 1024)


def test_counts_match_the_published_architecture() -> None:
    assert VICUNA_7B == 6_738_415_616 and CLIP_336 == 303_507_456  # the numbers their model cards give
    table = preset_table("llava-1.5-7b", "finetune", 8)
    trainable = VICUNA_7B + PROJECTOR_7B
    outside = 2 * 32000 * 4096 + 4096 + PROJECTOR_7B + CLIP_EMBEDDINGS
    assert (f"trainable {trainable:,} (projector, llm), frozen {CLIP_336:,}, largest block {BLOCK_7B:,}, "
            f"outside blocks {outside:,}") in table

    def gib(value: float) -> str:
        return f"{value / GIB:.1f}"

    # DDP: bf16 casts 2, fp32 weights 4, fp32 gradients 4, Adam 8 bytes per trained parameter, the frozen tower
    # 2 per parameter; at the peak the step's 4-byte temporary replaces the casts (freed after the backward)
    ddp = [0, 2 * trainable, 4 * trainable, 4 * trainable, 8 * trainable, 2 * CLIP_336, 4 * trainable,
           20 * trainable + 2 * CLIP_336]
    assert "| ddp | " + " | ".join(gib(value) for value in ddp) + " |" in table
    assert gib(20 * trainable + 2 * CLIP_336) == "126.5"
    # ZeRO-3 on 8 GPUs: bf16 weights and gradients, fp32 masters and Adam sharded 8 ways; 1e9 live parameters
    # gathered; the step's fp32 gradient shard and AdamW temporary (8 bytes per local parameter) top the gathered
    shard = trainable / 8
    zero3 = [2 * shard, 2 * 10**9, 4 * shard, 2 * shard, 8 * shard, 2 * CLIP_336 / 8, 8 * shard,
             24 * shard + 2 * CLIP_336 / 8]
    assert "| deepspeed_zero3 | " + " | ".join(gib(value) for value in zero3) + " |" in table


def test_rows_add_up() -> None:
    counts = ParameterCounts(trainable=1000, frozen=100, largest_block=50, outside_blocks=200)
    rows = {row.strategy: row for row in memory_rows(counts, gpus=4, zero3_max_live_parameters=300)}
    assert rows["fsdp"].gathered == 2 * (200 + 2 * 50)  # the root unit and two blocks, bf16
    # resident shards plus the larger of the gathered units (600) and the step's temporary (1000)
    assert rows["fsdp"].peak == 4 * 250 + 4 * 250 + 8 * 250 + 2 * 100 / 4 + 4 * 250
    assert rows["fsdp_grad_op"].gathered == 2 * 1100
    assert rows["deepspeed_zero2"].peak == 2 * 1000 + (4 + 2 + 8 + 8) * 250 + 2 * 100
    assert rows["deepspeed_zero3_offload"].peak == 2 * 300
    with pytest.raises(KeyError):
        rows["auto"]  # auto on several GPUs is DDP: one row
