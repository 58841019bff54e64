"""Per-GPU memory of LLaVA-1.5 finetuning under each strategy, from the presets' real architectures.

    python -m bench.memory_table                       # LLaVA-1.5-7B and -13B, stage finetune, 8 GPUs
    python -m bench.memory_table --gpus 4 --stage finetune_lora

from the checkout, with llava_pl installed.

Each preset is built on the meta device from the carried configs (``llava_pl/presets/hub``, no download), the
stage freezes what it freezes, and ``llava_pl.metrics.memory`` turns the parameter counts into the model states
per GPU under ``bf16-mixed``. docs/precision.md holds the output and its assumptions.
"""

from __future__ import annotations

import argparse

from hydra import compose, initialize_config_dir

from llava_pl.config_dir import CONF_DIR
from llava_pl.metrics.memory import (GIB, checkpointed_activations, count_parameters, format_table, memory_rows,
                                     offload_host_bytes)
from llava_pl.model.build import build_empty_model
from llava_pl.module import set_trainable
from llava_pl.resolvers import register_resolvers
from llava_pl.train import selected_stages


def preset_table(model: str, stage_name: str, gpus: int) -> str:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"stage={stage_name}", "experiment=none",
                                          "strategy=deepspeed_zero3"])  # for its stage3_max_live_parameters
    stage = selected_stages(cfg)[0]
    built = build_empty_model(cfg.model)
    if stage.lora and "llm" in stage.trains:
        from llava_pl.lora import apply_lora

        apply_lora(built, stage.lora)
    set_trainable(built, stage.trains)
    counts = count_parameters(built, built.block_classes())
    text = built.llm.config.get_text_config()
    rows = memory_rows(counts, gpus, cfg.strategy.zero_optimization.stage3_max_live_parameters)
    activations = checkpointed_activations(text.num_hidden_layers, text.hidden_size, stage.micro_batch_size,
                                           stage.max_length)
    return "\n".join([
        f"### {model}, stage {stage.name}, {gpus} GPUs (GiB per GPU)",
        "",
        f"trainable {counts.trainable:,} ({', '.join(stage.trains)}), frozen {counts.frozen:,}, largest block "
        f"{counts.largest_block:,}, outside blocks {counts.outside_blocks:,}",
        "",
        format_table(rows),
        "",
        f"deepspeed_zero3_offload host memory, all {gpus} GPUs together: {offload_host_bytes(counts) / GIB:.1f} GiB. "
        f"Activations kept by gradient checkpointing at micro-batch {stage.micro_batch_size} x "
        f"{stage.max_length} tokens: {activations / GIB:.1f} GiB per GPU (not in the table).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llava-1.5-7b", "llava-1.5-13b"])
    parser.add_argument("--stage", default="finetune")
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    register_resolvers()
    print("\n\n".join(preset_table(model, args.stage, args.gpus) for model in args.models))


if __name__ == "__main__":
    main()
