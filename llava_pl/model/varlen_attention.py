"""Attention confined to each sample of a packed row, for LLMs that use PyTorch's SDPA.

A packed row holds several samples back to back (``llava_pl.data.packing``). Flash-attention implementations of
transformers (``flash_attention_2``/``3``) read the sample boundaries from the ``cu_seq_lens_*`` keyword arguments
by themselves. For ``sdpa`` LLMs, ``use_varlen_attention`` switches to ``VARLEN_ATTENTION``: on CUDA in 16-bit it
calls ``torch.nn.attention.varlen.varlen_attn`` (flash-attention varlen kernels); elsewhere one causal SDPA call per
sample. Either way each sample costs its own length squared, and no ``(row, row)`` mask is ever built.
Batches that are not packed go to transformers' own SDPA path unchanged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "llava_pl_varlen"
"""The name under which ``use_varlen_attention`` registers the attention function and its mask with transformers."""

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


def _has_cuda_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` is ``(1, heads, total, head_dim)`` for a packed row
    whose samples end at ``cu_seq_lens_q[1:]``; returns ``(1, total, heads, head_dim)``."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row; got {query.shape[0]} rows")
    groups = getattr(module, "num_key_value_groups", 1)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0 and _has_cuda_varlen():
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
        length = int(max_length_q) if max_length_q is not None else int(cu.diff().max())
        output = varlen_attn(
            query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, cu, length, length,
            scale=scaling, window_size=(-1, 0), enable_gqa=groups > 1,
        )
        return output.unsqueeze(0), None
    return _attention_per_sample(query, repeat_kv(key, groups), repeat_kv(value, groups), cu_seq_lens_q, dropout,
                                 scaling)


@torch.compiler.disable  # a loop over data-dependent bounds: compiled blocks call it as it is
def _attention_per_sample(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
                          dropout: float, scaling: float | None) -> tuple[torch.Tensor, None]:
    bounds = cu_seq_lens.tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    # split, not one slice per sample: a slice's backward writes its gradient into a zeroed copy of the whole row,
    # so slicing costs (samples x row) in backward; split's backward is one concatenation
    pieces = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
        if q.shape[2] > 0
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def varlen_mask(
    batch_size: int, q_length: int, kv_length: int, *args, attention_mask: torch.Tensor | None = None, **kwargs
) -> torch.Tensor | None:
    """No mask where there is no padding and no cache (a packed row: the attention function confines each sample;
    a plain row: causal SDPA); SDPA's mask otherwise."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, *args, attention_mask=attention_mask, **kwargs)


def use_varlen_attention(llm: PreTrainedModel) -> str:
    """Makes ``llm`` attend within each sample of packed rows; returns the attention implementation it now uses.

    ``sdpa`` becomes ``VARLEN_ATTENTION``; flash attention already reads ``cu_seq_lens_*``; ``eager`` keeps
    transformers' block-diagonal mask built from the restarting position ids (correct, but its cost is the
    whole row's length squared).
    """
    current = llm.config._attn_implementation
    if current == "sdpa":
        AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
        AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_mask)
        llm.set_attn_implementation(VARLEN_ATTENTION)
        return VARLEN_ATTENTION
    if current not in (*FLASH_IMPLEMENTATIONS, VARLEN_ATTENTION):
        log.warning(f"packing with {current} attention: a block-diagonal mask over the whole packed row (slower)")
    return current
