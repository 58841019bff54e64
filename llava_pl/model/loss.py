"""The next-token loss, averaged over supervised tokens (LLaVA's way) or over samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava_pl.constants import IGNORE_INDEX
from llava_pl.stage import LOSS_AVERAGES, LossAverage


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
    tokens = torch.bincount(samples)
    sums = token_losses.new_zeros(len(tokens)).index_add(0, samples, token_losses)
    supervised = tokens > 0  # samples with nothing supervised have no mean to count
    return (sums[supervised] / tokens[supervised]).mean()


def supervised_loss(
    supervised_logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    average: LossAverage,
    sample_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss from the logits at the ``keep`` positions (``supervised_positions(labels)``) only, in their
    order; ``sample_lengths`` marks ``labels`` as one packed row of samples of these lengths."""
    # the labels move one step left rather than the logits one step right
    targets = labels[:, 1:][keep[:, :-1]]
    token_losses = F.cross_entropy(at_least_float32(supervised_logits), targets, reduction="none")
    samples = sample_index(labels.shape, sample_lengths, labels.device)[keep]
    return average_token_losses(token_losses, samples, average)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: LossAverage = "token",
    sample_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over the supervised positions of full ``(batch, seq, vocab)`` logits, averaged
    as ``average`` says; ``sample_lengths`` marks ``labels`` as one packed row of samples of these lengths."""
    labels = labels.to(logits.device)
    keep = supervised_positions(labels)
    return supervised_loss(logits[keep], labels, keep, average, sample_lengths)
