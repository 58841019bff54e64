"""LoRA adapters (peft) on the language model only."""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from llava_pl.model.llava import LlavaModel


def apply_lora(model: LlavaModel, lora: dict[str, Any]) -> None:
    """Wraps ``model.llm`` with LoRA adapters; only the adapters of the LLM will train.

    Only the LLM is handed to peft, so target names like ``q_proj`` can never match layers of the vision
    tower (a known LLaVA bug matched CLIP's attention too). ``target_modules: all-linear`` takes every
    linear layer of the LLM except its output head.
    """
    if isinstance(model.llm, PeftModel):
        return
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model.llm = get_peft_model(model.llm, config)


def has_lora(module: Any) -> bool:
    return isinstance(module, PeftModel)


def reset_adapters(layer: LoraLayer, model: PeftModel) -> None:
    """Initialises ``layer``'s adapters as peft does when it adds them (LoRA's B at zero: the wrapped layer's
    output is unchanged), with the settings of ``model``, the peft model holding the layer."""
    for adapter in layer.lora_A:
        layer.reset_lora_parameters(adapter, model.peft_config[adapter].init_lora_weights)
