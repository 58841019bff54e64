"""LLaVA's ``group_by_modality_length`` with token-accurate lengths: an epoch order in which every micro-batch
holds one modality (image or text-only) and samples of similar length, and each optimizer step gives every
rank about the same number of tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def balanced_split(group: Sequence[int], lengths: np.ndarray, world_size: int, batch_size: int) -> list[list[int]]:
    """``world_size`` micro-batches of ``batch_size`` from ``group``, longest first to the rank with the fewest
    tokens so far (LLaVA's ``split_to_even_chunks``)."""
    chunks: list[list[int]] = [[] for _ in range(world_size)]
    totals = [0] * world_size
    for index in sorted(group, key=lambda i: (-int(lengths[i]), i)):
        rank = min((r for r in range(world_size) if len(chunks[r]) < batch_size), key=lambda r: (totals[r], r))
        chunks[rank].append(index)
        totals[rank] += int(lengths[index])
    return chunks


def _sorted_groups(indices: list[int], lengths: np.ndarray, group: int, pool: int,
                   generator: torch.Generator) -> tuple[list[list[int]], list[int]]:
    """Shuffled ``indices`` cut into pools of ``pool`` groups, each pool sorted by length and cut into groups of
    ``group``; returns the full groups and what is left over (less than one group)."""
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    groups: list[list[int]] = []
    size = group * pool
    for start in range(0, len(order), size):
        sorted_pool = sorted(order[start:start + size], key=lambda i: (int(lengths[i]), i))
        groups += [sorted_pool[at:at + group] for at in range(0, len(sorted_pool), group)]
    if groups and len(groups[-1]) < group:
        return groups[:-1], groups[-1]
    return groups, []


def modality_length_order(
    indices: Sequence[int],
    lengths: np.ndarray,
    has_image: np.ndarray,
    batch_size: int,
    world_size: int,
    generator: torch.Generator,
    pool: int = 50,
) -> list[list[list[int]]]:
    """One epoch as a list of optimizer-step groups, each ``world_size`` micro-batches of ``batch_size`` indices.

    Image and text-only samples are grouped apart; each modality is shuffled, sorted by length within pools of
    ``pool`` groups and cut into groups of ``world_size × batch_size`` similar lengths, which are spread over
    the ranks by tokens (``balanced_split``); the groups are shuffled. The two modalities' leftovers form the
    last group(s) (one of which may mix them, as in LLaVA), padded to full size with the epoch's first samples so
    that every rank runs the same number of steps.

    Args:
        lengths, has_image: per data set index (text tokens + image tokens; whether it has an image).
    """
    group = batch_size * world_size
    image = [i for i in indices if has_image[i]]
    text = [i for i in indices if not has_image[i]]
    image_groups, image_rest = _sorted_groups(image, lengths, group, pool, generator)
    text_groups, text_rest = _sorted_groups(text, lengths, group, pool, generator)
    groups = image_groups + text_groups
    groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    rest = text_rest + image_rest  # each sorted by length: at most one group mixes the two
    if rest:
        fill = [index for full in groups for index in full] or rest
        while len(rest) % group:
            rest += fill[: group - len(rest) % group]
        groups += [rest[at:at + group] for at in range(0, len(rest), group)]
    return [balanced_split(g, lengths, world_size, batch_size) for g in groups]
