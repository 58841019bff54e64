"""The next-token loss, averaged over supervised tokens (LLaVA's way) or over samples."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from llava_pl.constants import IGNORE_INDEX

LossAverage = Literal["token", "sample"]
LOSS_AVERAGES: tuple[str, ...] = ("token", "sample")


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """16-bit logits in float32 for the loss; float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` booleans: the positions whose next token is supervised, the only logits a loss reads."""
    return F.pad(labels[:, 1:] != IGNORE_INDEX, (0, 1), value=False)


def sample_index(shape: torch.Size, sample_lengths: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``(batch, seq)`` sample numbers: the row for a padded batch, each packed sample's own for one packed row."""
    rows, length = shape
    if sample_lengths is None:
        return torch.arange(rows, device=device).unsqueeze(1).expand(rows, length)
    numbers = torch.arange(len(sample_lengths), device=device)
    return numbers.repeat_interleave(sample_lengths.to(device)).unsqueeze(0)


def average_token_losses(token_losses: torch.Tensor, samples: torch.Tensor, average: LossAverage) -> torch.Tensor:
    """The mean of the supervised tokens' losses (``token``), or of each sample's mean (``sample``: a one-word
    answer then weighs as much as a long description); 0 when no token is supervised. ``samples`` gives each
    loss's sample number."""
    if average == "token":
        return token_losses.sum() / max(token_losses.numel(), 1)
    if average != "sample":
        raise ValueError(f"loss average must be one of {list(LOSS_AVERAGES)}, got {average!r}")
    if token_losses.numel() == 0:
        return token_losses.sum()
    _, dense = torch.unique(samples, return_inverse=True)
    count = int(dense.max()) + 1
    sums = token_losses.new_zeros(count).index_add(0, dense, token_losses)
    tokens = torch.bincount(dense, minlength=count).to(token_losses.dtype)
    return (sums / tokens).mean()


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: LossAverage = "token",
    sample_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over the supervised positions, averaged as ``average`` says; ``sample_lengths``
    marks ``labels`` as one packed row of samples of these lengths."""
    labels = labels.to(logits.device)
    keep = supervised_positions(labels)
    # the labels move one step left rather than the logits one step right; only supervised positions' logits are read
    targets = labels[:, 1:][keep[:, :-1]]
    token_losses = F.cross_entropy(at_least_float32(logits[keep]), targets, reduction="none")
    samples = sample_index(labels.shape, sample_lengths, logits.device)[keep]
    return average_token_losses(token_losses, samples, average)
