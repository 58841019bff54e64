"""Centring a fresh projector on its vision encoder's features.

A vision tower's patch features can share one large vector, as a random tower's do on the demo's light images
(docs/training.md, "Centring the projector"). Behind a fresh projector, that shared part becomes most of every image
token, and what tells one patch from another is a small remainder.
Setting the projector's ``input_center`` buffer to the features' mean makes it read mean-free features for
the whole run. Folding the mean into the first bias instead would centre only the start: every update of the
first weight ``W`` then moves all image tokens together by ``dW @ mean``, and the shared part grows back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from llava_pl.model.projector import INPUT_CENTER


def first_linear(projector: nn.Module) -> nn.Linear:
    """The linear layer that reads the vision features."""
    layer = next((module for module in projector.modules() if isinstance(module, nn.Linear)), None)
    if layer is None or layer.bias is None:
        raise ValueError(f"centring needs a projector that starts with a linear layer with a bias, got {projector}")
    return layer


def feature_sum(vision: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over images and positions of the encoder's output features, and how many feature vectors that is."""
    features = vision(pixel_values).float()
    return features.sum(dim=(0, 1)), features.shape[0] * features.shape[1]


def check_unsharded(projector: nn.Module, channels: int) -> nn.Linear:
    """The projector's first layer, if it is whole on this process (not an FSDP DTensor or a ZeRO-3 partition)."""
    layer = first_linear(projector)
    weight = layer.weight
    if isinstance(weight, DTensor) or weight.dim() != 2 or weight.shape[1] != channels:
        raise ValueError(
            f"cannot centre a sharded projector (its first weight is a {type(weight).__name__} of shape "
            f"{tuple(weight.shape)}, features have {channels} channels): model.center_projector works with "
            "strategy=auto or ddp"
        )
    return layer


def set_input_center(projector: nn.Module, mean: torch.Tensor) -> None:
    """From now on ``projector(x)`` computes what it computed for ``x - mean``, where ``mean`` is the vision
    features' mean."""
    check_unsharded(projector, mean.numel())
    center = getattr(projector, INPUT_CENTER, None)
    if not isinstance(center, torch.Tensor) or center.shape != mean.shape:
        raise ValueError(f"centring needs a projector with an {INPUT_CENTER} buffer of shape {tuple(mean.shape)}, "
                         f"got {type(projector).__name__}")
    with torch.no_grad():
        center.copy_(mean)
