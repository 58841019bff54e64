"""Projectors that map vision features into the language model's embedding space."""

from __future__ import annotations

import torch
from torch import nn

INPUT_CENTER = "input_center"
"""A projector's buffer subtracted from every vision feature before its first layer: zeros unless
``model.center_projector`` set it (``llava_pl.model.centering``)."""


def _register_input_center(projector: nn.Module, vision_dim: int) -> None:
    projector.register_buffer(INPUT_CENTER, torch.zeros(vision_dim))


def _zero_input_center(projector: nn.Module) -> None:
    center = getattr(projector, INPUT_CENTER, None)
    if center is not None:  # nn.Linear.__init__ resets its weights before the buffer exists
        with torch.no_grad():
            center.zero_()


class LinearProjector(nn.Linear):
    """LLaVA-1's projector: one linear layer."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__(vision_dim, llm_dim)
        _register_input_center(self, vision_dim)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        _zero_input_center(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features - self.input_center)


HF_LLAVA_LAYERS = {"0": "linear_1", "2": "linear_2"}
"""``mlp2x_gelu``'s layer indices and their names in Hugging Face's ``LlavaMultiModalProjector``."""


class MLPProjector(nn.Sequential):
    """``mlp{depth}x_gelu``: linear, then (GELU, linear) ``depth - 1`` times; LLaVA-1.5 uses depth 2."""

    def __init__(self, vision_dim: int, llm_dim: int, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"projector depth must be at least 1, got {depth}")
        layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        super().__init__(*layers)
        _register_input_center(self, vision_dim)

    def reset_parameters(self) -> None:
        """Zeroes the input centre (``llava_pl.model.build.materialize`` resets the layers themselves)."""
        _zero_input_center(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features - self.input_center)
