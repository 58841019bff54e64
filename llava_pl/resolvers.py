"""OmegaConf resolvers used by the configs in ``conf/``."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def best_precision() -> str:
    """bf16 mixed precision where the GPU supports it, full precision elsewhere (CPUs are slow at bf16)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("best_precision"):
        OmegaConf.register_new_resolver("best_precision", best_precision)
