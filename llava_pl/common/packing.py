"""The layout of a packed row (``data.packing=true``): several samples concatenated, each with positions
restarting at 0. ``llava_pl.data.packing`` builds such rows; the model reads their boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def position_ids_of(lengths: Sequence[int]) -> torch.Tensor:
    """``[0, 1, …, n₀-1, 0, 1, …, n₁-1, …]``: positions restarting at every sample."""
    return torch.cat([torch.arange(length) for length in lengths])


def cumulative_lengths(sample_lengths: torch.Tensor) -> torch.Tensor:
    """``[0, n₀, n₀+n₁, …]`` as int32: the sample boundaries that varlen attention kernels take."""
    return torch.nn.functional.pad(sample_lengths.cumsum(0, dtype=torch.int32), (1, 0))


def unpack_rows(row: torch.Tensor, sample_lengths: torch.Tensor, value: int) -> torch.Tensor:
    """A packed ``(1, total)`` row back to ``(samples, longest)``, padded with ``value``."""
    pieces = row[0].split(sample_lengths.tolist())
    out = row.new_full((len(pieces), max(piece.shape[0] for piece in pieces)), value)
    for index, piece in enumerate(pieces):
        out[index, : piece.shape[0]] = piece
    return out
