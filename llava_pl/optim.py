"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup, get_wsd_schedule


def no_decay(name: str, parameter: nn.Parameter) -> bool:
    """Biases and normalisation weights (all 1-D parameters) get no weight decay."""
    return parameter.ndim < 2 or name.endswith(".bias")


def parameter_groups(
    parts: Iterable[tuple[str, nn.Module, float]], weight_decay: float
) -> list[dict]:
    """One decayed and one non-decayed group per trainable part, each named ``<part>`` / ``<part>/no_decay``.

    Args:
        parts: ``(name, module, learning rate)`` per part; only parameters that require grad are taken.
    """
    groups = []
    for part_name, module, lr in parts:
        decayed, plain = [], []
        for name, parameter in module.named_parameters():
            if parameter.requires_grad:
                (plain if no_decay(name, parameter) else decayed).append(parameter)
        if decayed:
            groups.append({"name": part_name, "params": decayed, "lr": lr, "weight_decay": weight_decay})
        if plain:
            groups.append({"name": f"{part_name}/no_decay", "params": plain, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise ValueError("no trainable parameters: the stage freezes every part")
    return groups


def lr_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int, decay_steps: int | None = None) -> LambdaLR:
    """Linear warmup to each group's learning rate, then a cosine to zero.

    Without ``decay_steps`` the cosine spans every step after warmup (LLaVA's schedule); with it, the rate stays at
    its peak until the last ``decay_steps`` steps and the cosine spans those (warmup-stable-decay).
    """
    if decay_steps is None:
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    return get_wsd_schedule(optimizer, warmup_steps, decay_steps, num_training_steps=total_steps)
